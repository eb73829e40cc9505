"""The one Step contract. Built-in steps and plugins implement exactly this.

A step is a class with:

- ``name`` and ``version`` (bump the version when the step's output for the same inputs changes),
- ``Params``: a pydantic model with ``extra="forbid"``; validated values with defaults filled enter
  the task key,
- ``inputs``: the named inputs it reads (``model``: the previous step's output or, for the first
  step, the model source; ``source``: the model source folder; ``samples``: the recipe's sample
  text file, absent from ``ctx.inputs`` when the recipe has none; ``labelled``: the recipe's
  labelled file (``label<TAB>text`` lines), likewise; ``reference``: for a check
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
- ``exclusive``: True for a step that measures speed: its task runs alone (``orchestrator.store.locks``);
  ``measures_speed``: ``--rebench`` runs it again,
- ``toolchain``: distributions whose installed versions enter the key (e.g. ``("onnxruntime",)``);
  each must be installed when the step is registered unless listed in ``optional_toolchain``,
- ``hardware_keys``: the target hardware properties that change its output; ``machine_keys``: the
  facts of the machine a measurement depends on (``cpu_model``, ``cpu_count``),
- ``plan(params, at)``: the one planning hook: the completed params, the inputs, toolchain and
  resources of one task and the params that do not apply to it (default: the class attributes),
- ``run(ctx)``: does the work, writes each output at ``ctx.output(name)``, returns metrics.

Check steps (``kind = "check"``) produce only metrics; ``gate_fields`` are params that judge the
metrics (thresholds) rather than produce them, so they stay out of the key and changing a threshold
never re-measures. ``judge(params, metrics, reference)`` returns a ``Verdict``: the manifest
section (under ``checks``, or the top-level ``manifest_section``) and the reasons it fails.
The whole contract, with examples: docs/plugins.md.

Heavy imports (torch, onnxruntime, openvino, ...) belong inside ``run``: the registry imports step
modules to validate recipes, and planning must stay fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

StepKind = Literal["transform", "check"]
KNOWN_INPUTS = ("model", "source", "samples", "labelled", "reference")
P = TypeVar("P", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Requirements(_Strict):
    """What the machine must have to build and measure a target (orchestrator.plan.fit checks it)."""

    cpu_features: tuple[Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]+$")], ...] = Field(
        (), description="CPU ISA features, as /proc/cpuinfo names them (avx512_vnni, amx_int8)")
    compute_capability: float | None = Field(
        None, gt=0, description="Lowest CUDA compute capability, e.g. 8.0 (cuda targets only)")
    memory_gb: float | None = Field(
        None, gt=0, description="Least memory: of one GPU on a cuda target, of the machine on a cpu one")


class Hardware(_Strict):
    device: Literal["cpu", "cuda"] = "cpu"
    accelerator: str | None = Field(
        None, description="Accelerator type (e.g. 'A100', 'orin'); routes tasks on a cluster, and "
                          "on a cuda target the GPU's name must contain it."
    )
    requires: Requirements = Field(default_factory=Requirements)

    @model_validator(mode="after")
    def _cuda_only(self) -> Hardware:
        if self.device != "cuda" and self.requires.compute_capability is not None:
            raise ValueError("requires.compute_capability applies to device: cuda only")
        return self

    def record(self) -> dict[str, Any]:
        """The manifest's form: ``requires`` only when the target sets one."""
        out = self.model_dump(mode="json", exclude={"requires"})
        req = self.requires.model_dump(mode="json", exclude_defaults=True)
        if req:
            out["requires"] = req
        return out


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
    through ``Step.plan``, as param values.)"""

    task: str = "feature-extraction"
    trust_remote_code: bool = False


class HardwareView(dict[str, Any]):
    """``ctx.hardware``: only the target hardware properties the step declares in
    ``hardware_keys`` (what its key holds), in a build, under ``orchestrator.testing.run_step``
    and ``--in-process`` alike; reading another one says how to declare it."""

    def __init__(self, hardware: dict[str, Any], keys: tuple[str, ...], step: str = "") -> None:
        super().__init__({k: hardware.get(k) for k in keys})
        self._step, self._keys = step, keys

    def __missing__(self, key: str) -> Any:
        raise KeyError(f"ctx.hardware holds only the hardware properties the step declares in "
                       f"hardware_keys ({', '.join(self._keys) or 'none'}), which enter its key; "
                       f"add {key!r} to {self._step or 'the step'}'s hardware_keys to read it")


@dataclass
class StepContext(Generic[P]):
    """What a running step sees. Paths only: the step never touches the cache itself."""

    params: P
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


class Step(Generic[P]):
    """The contract. ``Step[MyParams]`` types ``ctx.params`` as ``MyParams`` (and sets ``Params``
    when the class does not)."""

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
    # Its results are timings: ``--rebench`` runs it again even when it is cached.
    measures_speed: ClassVar[bool] = False
    toolchain: ClassVar[tuple[str, ...]] = ()
    # Modules the step imports that a warm worker server may import ahead (executors/warm.py):
    # a task of this step then starts without paying for them. Only modules that start no
    # thread at import are taken (onnxruntime, openvino and TensorFlow are left out); nothing
    # else depends on it, and the key never sees it.
    preload: ClassVar[tuple[str, ...]] = ()
    optional_toolchain: ClassVar[tuple[str, ...]] = ()
    hardware_keys: ClassVar[tuple[str, ...]] = ()
    gate_fields: ClassVar[tuple[str, ...]] = ()
    # Facts of the machine a measuring step's result depends on ("cpu_model", "cpu_count").
    machine_keys: ClassVar[tuple[str, ...]] = ()
    # A check that also measures the untouched model source (e.g. parity's PyTorch reference outputs)
    # gets one shared extra task with ``model`` = the source, these param overrides and
    # ``ctx.reference = True``. Its metrics reach judge(); a check that declares the input
    # "reference" also gets the files that task wrote (e.g. cached reference outputs).
    # Outputs of a check are optional: write them only where useful (the reference task).
    reference: ClassVar[dict[str, Any] | None] = None
    # Where a check's verdict goes in the manifest: "checks" (under its name) or a top-level
    # section of its own ("benchmark").
    manifest_section: ClassVar[str] = "checks"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Params" in vars(cls):
            return
        for base in getattr(cls, "__orig_bases__", ()):
            args = get_args(base)
            if args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
                cls.Params = args[0]
                return

    def run(self, ctx: StepContext[P]) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def group_key(cls, params: P) -> tuple[Any, ...] | None:
        """Optional, for exclusive checks: tasks of this step whose keys are equal (and whose
        ``source`` input and hardware are the same) may run together in one worker through
        ``run_group`` (the benchmark times several engines against one reference in one window).
        None (the default): never grouped."""
        return None

    def run_group(self, ctxs: Sequence[StepContext[P]]) -> list[dict[str, Any] | BaseException]:
        """Run several tasks of this step together (see ``group_key``): one metrics dict, or the
        exception that failed that task alone, per context, in order."""
        raise NotImplementedError

    @classmethod
    def plan(cls, params: P, at: PlanContext) -> Planned[P]:
        """What one task of this step needs, given its params and where it runs: the one planning
        hook. The default reads the class attributes; override it to depend on the params (an
        input only one mode reads), the hardware (a CUDA device for a cuda target) or the formats
        the inputs arrive in (the runtime of the engine a check is given)."""
        return cls.planned(params)

    @classmethod
    def planned(cls, params: P, **changes: Any) -> Planned[P]:
        """The default plan (the class attributes), with ``changes`` (Planned's fields)."""
        return replace(Planned(params, cls.inputs, cls.toolchain, cls.resources), **changes)

    @classmethod
    def judge(cls, params: P, metrics: dict[str, Any], reference: dict[str, Any] | None) -> Verdict:
        """A check's verdict on its metrics (``reference``: the metrics of its reference task):
        the manifest section and the reasons it fails, judged with this target's gate fields.
        Default: the metrics as they are, never failing."""
        return Verdict(dict(metrics))


@dataclass(frozen=True)
class PlanContext:
    """What planning knows about one task of a step (given to ``Step.plan``)."""

    hardware: Hardware = field(default_factory=Hardware)
    # the format each input would arrive in: ``model`` the upstream step's declared output format
    # (``hf-model`` for the model source), ``source`` hf-model, ``samples`` text
    input_formats: dict[str, str] = field(default_factory=dict)
    # the recipe's inputs.shapes (they reach the key only through the params a step fills from them)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    reference: bool = False  # this is a check's reference task (model = the model source)
    task: str = "feature-extraction"  # the recipe's model.task


@dataclass(frozen=True)
class Planned(Generic[P]):
    """What the engine needs to know about one task, from ``Step.plan``."""

    params: P  # completed (e.g. defaults filled from the recipe's shapes): they are keyed and run
    inputs: tuple[str, ...]  # what it reads; an input left out stays out of the key
    toolchain: tuple[str, ...]  # distributions whose versions enter the key
    resources: Resources  # what one run needs
    # params that do not apply to this task (another mode's): put back at their defaults before
    # keying, so setting them changes neither the key nor the work
    unused: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """A check's judgement of its metrics for one target."""

    summary: dict[str, Any]  # the manifest's section for the check
    failures: list[str] = field(default_factory=list)  # why it fails; empty: it passes
    # gates that could not decide (a noisy figure whose interval straddles the threshold): a
    # warning, and a failure under `--strict`
    unjudged: list[str] = field(default_factory=list)


def at_defaults(params: P, fields: tuple[str, ...]) -> P:
    """params with ``fields`` back at their defaults."""
    model = type(params).model_fields
    defaults = {f: model[f].get_default(call_default_factory=True) for f in fields}
    return params.model_copy(update=defaults)
