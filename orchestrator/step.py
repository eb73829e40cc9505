"""The one Step contract. Built-in steps and plugins implement exactly this.

A step is a class with:

- ``name`` and ``version`` (bump the version when the step's output for the same inputs changes),
- ``Params``: a pydantic model with ``extra="forbid"``; validated values with defaults filled enter
  the task key,
- ``inputs``: the named inputs it reads (``model``: the previous step's output or, for the first
  step, the model source; ``source``: the model source folder; ``samples``: the recipe's sample
  text file, absent from ``ctx.inputs`` when the recipe has none; ``reference``: for a check
  with ``reference`` set, the ``reference`` output of its reference task),
- ``outputs``: output name -> file name; a name ending in ``/`` is a folder (stored as a tree),
- ``input_formats``: the formats the ``model`` input may have (``("onnx",)``; see
  ``orchestrator.formats``), checked against the step before it when the recipe loads,
- ``output_formats``: output name -> format; each output is validated by its format right after
  ``run``, before anything is cached,
- ``resources``: what one run needs (cpu cores, cuda devices, memory),
- ``timeout_s`` / ``max_memory_mb``: default limits of one task (None: none); a recipe's
  ``limits:`` and a step use's own ``limits:`` override them. Past either the task's process group
  is killed and the task fails; they never enter the key,
- ``exclusive``: True for a step that measures speed: its task runs alone (``orchestrator.locks``),
- ``toolchain``: distributions whose installed versions enter the key (e.g. ``("onnxruntime",)``);
  each must be installed when the step is registered unless listed in ``optional_toolchain``,
- ``hardware_keys``: the target hardware properties that change its output,
- ``run(ctx)``: does the work, writes each output at ``ctx.output(name)``, returns metrics.

Check steps (``kind = "check"``) produce only metrics; ``gate_fields`` are params that judge the
metrics (thresholds) rather than produce them, so they stay out of the key and changing a threshold
never re-measures. ``gate(params, metrics)`` returns the reasons a check fails, empty when it passes.

Heavy imports (torch, onnxruntime, openvino, ...) belong inside ``run``: the registry imports step
modules to validate recipes, and planning must stay fast.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

StepKind = Literal["transform", "check"]
KNOWN_INPUTS = ("model", "source", "samples", "reference")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hardware(_Strict):
    device: Literal["cpu", "cuda"] = "cpu"
    accelerator: str | None = Field(
        None, description="Accelerator type (e.g. 'A100', 'orin'); routes tasks on a cluster."
    )


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: int = Field(1, ge=1)
    cuda: int = Field(0, ge=0)
    memory_gb: float = Field(1.0, ge=0)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ModelInfo:
    """Recipe-level facts about the model; both enter every key. (inputs.shapes reach a step only
    through ``complete_params``, as param values.)"""

    task: str = "feature-extraction"
    trust_remote_code: bool = False


@dataclass
class StepContext:
    """What a running step sees. Paths only: the step never touches the cache itself."""

    params: Any
    inputs: dict[str, Path]
    out_dir: Path
    outputs: dict[str, str]
    hardware: dict[str, Any]
    model: ModelInfo
    threads: int = 1
    reference: bool = False
    warnings: list[str] = field(default_factory=list)

    def output(self, name: str) -> Path:
        """Where to write output ``name`` (a folder for names declared with a trailing '/')."""
        if name not in self.outputs:
            raise KeyError(f"output {name!r} is not declared; declared: {sorted(self.outputs)}")
        filename = self.outputs[name]
        path = self.out_dir / filename.rstrip("/")
        if filename.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        return path

    def input(self, name: str) -> Path:
        if name not in self.inputs:
            raise KeyError(f"input {name!r} is not available; available: {sorted(self.inputs)}")
        return self.inputs[name]

    def log(self, message: str) -> None:
        """A line for the task's log (its tail is shown when the task fails)."""
        print(message, flush=True)

    def warn(self, message: str) -> None:
        """A warning shown after the build and recorded in the step's metrics."""
        self.warnings.append(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


class Step:
    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str] = ""
    kind: ClassVar[StepKind] = "transform"
    Params: ClassVar[type[BaseModel]] = NoParams
    inputs: ClassVar[tuple[str, ...]] = ("model",)
    outputs: ClassVar[dict[str, str]] = {}
    input_formats: ClassVar[dict[str, tuple[str, ...]]] = {}
    output_formats: ClassVar[dict[str, str]] = {}
    resources: ClassVar[Resources] = Resources()
    timeout_s: ClassVar[float | None] = None
    max_memory_mb: ClassVar[float | None] = None
    # A step that measures speed (the benchmark) runs alone: in its build nothing runs beside it,
    # and it holds the machine lock exclusive, so no task of another build does either.
    exclusive: ClassVar[bool] = False
    toolchain: ClassVar[tuple[str, ...]] = ()
    optional_toolchain: ClassVar[tuple[str, ...]] = ()
    hardware_keys: ClassVar[tuple[str, ...]] = ()
    gate_fields: ClassVar[tuple[str, ...]] = ()
    # Facts of the machine a measuring step's result depends on ("cpu_model", "cpu_count").
    machine_keys: ClassVar[tuple[str, ...]] = ()
    # A check that also measures the untouched model source (e.g. parity's PyTorch reference outputs)
    # gets one shared extra task with ``model`` = the source, these param overrides and
    # ``ctx.reference = True``. Its metrics reach gate()/summarize(); a check that declares the
    # input "reference" also gets the files that task wrote (e.g. cached reference outputs).
    # Outputs of a check are optional: write them only where useful (the reference task).
    reference: ClassVar[dict[str, Any] | None] = None

    def run(self, ctx: StepContext) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def unused_params(cls, params: Any, fields: tuple[str, ...]) -> Any:
        """params with ``fields`` back at their defaults: for fields that do not apply to this
        task's mode, so that setting them changes neither the key nor the work."""
        defaults = {f: cls.Params.model_fields[f].get_default(call_default_factory=True)
                    for f in fields}
        return params.model_copy(update=defaults)

    @classmethod
    def resources_for(cls, hardware: dict[str, Any]) -> Resources:
        """What one task needs on the target's hardware (default: ``resources``)."""
        return cls.resources

    @classmethod
    def complete_params(cls, params: Any, model: dict[str, Any]) -> Any:
        """Params with recipe-level defaults filled in (e.g. the benchmark grid from
        inputs.shapes), so the key holds the values used, not where they came from."""
        return params

    @classmethod
    def inputs_for(cls, params: Any) -> tuple[str, ...]:
        """The inputs one task reads, given its params (default: all of ``inputs``). An input
        left out here stays out of the key: editing it rebuilds nothing."""
        return cls.inputs

    @classmethod
    def toolchain_for(cls, inputs: dict[str, str], reference: bool) -> tuple[str, ...]:
        """The toolchain of one task, knowing the format each input arrives in (the upstream
        step's declared output format; ``hf-model`` for the model source). A check
        that runs whatever engine it is given narrows it to that engine's runtime."""
        return cls.toolchain

    @classmethod
    def gate(cls, params: Any, metrics: dict[str, Any], reference: dict[str, Any] | None) -> list[str]:
        """Reasons this check fails (empty: it passes). Only for ``kind = "check"``."""
        return []

    @classmethod
    def summarize(
        cls, params: Any, metrics: dict[str, Any], reference: dict[str, Any] | None
    ) -> dict[str, Any]:
        """What goes into the manifest's section for this check (default: the metrics)."""
        return metrics
