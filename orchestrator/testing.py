"""Run a step in this process, on the same contract a worker holds it to.

- ``run_step(StepCls, params, inputs)``: for a plugin's own unit tests. The step is validated as
  the registry validates it, planned with its ``plan`` hook (completed params, unused params at
  their defaults), run on a real ``StepContext`` in a fresh folder, and its outputs are validated
  by their formats; a check is judged with the params given (gates included).
- ``run_task_in_process``: ``deploy-build RECIPE --only T/POS --in-process`` runs that one task in
  the foreground, on its cached inputs, so ``breakpoint()`` and a debugger work. Nothing is cached.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator.step import (
    Hardware,
    HardwareView,
    ModelInfo,
    PlanContext,
    Step,
    StepContext,
    Verdict,
    at_defaults,
)

# format of a given input path, guessed from what it holds (pass input_formats to say it)
_KIND_FORMAT = {"pytorch": "hf-model", "onnxruntime": "onnx", "openvino": "openvino-ir",
                "torchscript": "torchscript"}


@dataclass(frozen=True)
class StepRun:
    """What one in-process run gave: output paths, metrics, warnings, the params it ran with
    (planned: completed, unused ones at their defaults) and, for a check, its verdict."""

    outputs: dict[str, Path]
    metrics: dict[str, Any]
    warnings: list[str]
    params: BaseModel
    verdict: Verdict | None = None
    out_dir: Path = field(default=Path("."))


def _format_of(name: str, path: Path) -> str:
    if name == "samples":
        return "text"
    if name == "source":
        return "hf-model"
    from orchestrator.runtime.engines import engine_kind

    try:
        return _KIND_FORMAT.get(engine_kind(path), "any")
    except ValueError:
        return "any"


def _validated(step_cls: type[Step[Any]]) -> None:
    """The checks the registry makes when it registers a step."""
    from orchestrator.errors import FatalError
    from orchestrator.registry import validate_step

    problems = validate_step(step_cls)
    if problems:
        raise FatalError(f"{getattr(step_cls, '__name__', step_cls)} is not a valid step: "
                         + "; ".join(problems))


def run_step(step_cls: type[Step[Any]], params: BaseModel | dict[str, Any] | None = None,
             inputs: dict[str, Path | str] | None = None, *, task: str = "feature-extraction",
             trust_remote_code: bool = False, hardware: dict[str, Any] | None = None,
             threads: int = 1, reference: bool = False, shapes: dict[str, list[int]] | None = None,
             input_formats: dict[str, str] | None = None, out_dir: Path | None = None,
             reference_metrics: dict[str, Any] | None = None) -> StepRun:
    """Run ``step_cls`` once in this process, as a build's worker would; raise what it raises
    (a ``ContractError`` for an invalid output or a write into an input). A check is judged with
    ``reference_metrics`` as its reference task's metrics (e.g. a run with reference=True)."""
    from orchestrator.run.worker import run_checked

    _validated(step_cls)
    given = {k: Path(v) for k, v in (inputs or {}).items()}
    unknown = sorted(set(given) - set(step_cls.inputs))
    if unknown:
        raise ValueError(f"{step_cls.name} has no inputs {unknown}; its inputs: {list(step_cls.inputs)}")
    raw = params if isinstance(params, BaseModel) else step_cls.Params.model_validate(params or {})
    hw = Hardware.model_validate(hardware or {})
    formats_in = {k: _format_of(k, p) for k, p in given.items()} | (input_formats or {})
    planned = step_cls.plan(raw, PlanContext(hw, formats_in, shapes or {}, reference, task))
    run_params = at_defaults(planned.params, planned.unused)
    missing = [i for i in planned.inputs if i not in given and i not in ("samples", "reference")]
    if missing:
        raise ValueError(f"{step_cls.name} reads inputs {missing}; pass them in inputs=")
    folder = Path(out_dir) if out_dir else _temp_folder(f"run-step-{step_cls.name}-")
    folder.mkdir(parents=True, exist_ok=True)
    ctx: StepContext[Any] = StepContext(
        params=run_params, inputs={k: v for k, v in given.items() if k in planned.inputs},
        out_dir=folder, outputs=dict(step_cls.outputs),
        hardware=HardwareView(hw.model_dump(), tuple(step_cls.hardware_keys), step_cls.name),
        model=ModelInfo(task, trust_remote_code), threads=threads, reference=reference)
    metrics = run_checked(step_cls, ctx, protect=False)
    outputs = {name: folder / f.rstrip("/") for name, f in step_cls.outputs.items()
               if (folder / f.rstrip("/")).exists()}
    verdict = step_cls.judge(planned.params, metrics, reference_metrics) \
        if step_cls.kind == "check" and not reference else None
    return StepRun(outputs, metrics, list(ctx.warnings), run_params, verdict, folder)


_TEMP: list[Path] = []  # run_step's own folders: removed when the process exits


def _temp_folder(prefix: str) -> Path:
    """A temporary folder for run_step's outputs, kept while the process lives (the caller reads
    the outputs after the call) and removed when it exits."""
    import atexit

    if not _TEMP:
        atexit.register(_remove_temp)
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    _TEMP.append(folder)
    return folder


def _remove_temp() -> None:
    for folder in _TEMP:
        shutil.rmtree(folder, ignore_errors=True)


def _find(graph: Any, only: str) -> Any:
    for task in graph.tasks():
        for r, t, p in task.labels:
            if only in (f"{r}/{t}/{p}", f"{t}/{p}"):
                return task
    raise AssertionError(f"--only {only} selected no task")  # open_session checked the label


def _inputs(session: Any, task: Any, folder: Path) -> dict[str, Path]:
    """The task's inputs: source paths as they are, upstream outputs from the cache."""
    from orchestrator.errors import FatalError
    from orchestrator.store.base import Blob

    plan, paths = session.plan, {}
    for name, (node, out) in task.inputs.items():
        if node in plan.sources:
            paths[name] = plan.sources[node].path
            continue
        d = plan.decisions[node]
        if d.status != "HIT" or d.entry is None:
            up = plan.graph.task(node).label
            raise FatalError(f"--in-process runs {task.label} on cached inputs, and its input "
                             f"{name!r} (from {up}) is not cached ({d.status}); build it first: "
                             f"deploy-build {' '.join(r.path.as_posix() for r in session.recipes)} "
                             f"--only {up}")
        ref = d.entry.outputs[out]
        dest = folder / "in" / name / ref["filename"].rstrip("/")
        session.store.materialize(Blob.from_json(ref), dest)
        _own_copies(dest)
        paths[name] = dest
    return paths


def _own_copies(path: Path) -> None:
    """Replace hard links into the cache under path by copies: a step run in the foreground is
    not sandboxed like a worker, and a write into its input must not change a stored blob."""
    for f in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
        if f.stat().st_nlink > 1:
            tmp = f.with_name(f".{f.name}.copy")
            shutil.copyfile(f, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, f)


def run_task_in_process(session: Any, only: str, jobs: int, lock_timeout: float | None = None
                        ) -> int:
    """Run the task ``only`` in this process, in the foreground (breakpoint() works), on its
    cached inputs; print its metrics and where its outputs are. Nothing is cached. It holds the
    machine lock as a build's task would (a benchmark alone), so it neither disturbs nor is
    disturbed by another build's benchmark."""
    from orchestrator.errors import EXIT_BUILD_FAILED
    from orchestrator.store.locks import BuildLocks, LockTimeout, hold_machine

    task = _find(session.graph, only)
    with BuildLocks(session.store.root) as locks:
        try:
            hold_machine(locks, task.id, task.exclusive, task.label, lock_timeout,
                         lambda line: print(line, file=sys.stderr, flush=True))
        except LockTimeout as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BUILD_FAILED
        return _run_in_process(session, task, jobs)


def _run_in_process(session: Any, task: Any, jobs: int) -> int:
    from orchestrator.errors import EXIT_BUILD_FAILED, EXIT_OK
    from orchestrator.run.worker import ContractError, run_checked

    cls = task.info.cls
    recipe, target, pos = task.labels[0]
    folder = session.out / "in-process" / recipe / target / pos.replace(":", "-")
    shutil.rmtree(folder, ignore_errors=True)
    ctx: StepContext[Any] = StepContext(
        params=cls.Params.model_validate(task.params), inputs=_inputs(session, task, folder),
        out_dir=folder / "out", outputs=dict(cls.outputs),
        hardware=HardwareView(task.hardware, tuple(cls.hardware_keys), cls.name),
        model=ModelInfo(**task.model), threads=max(1, min(task.resources.cpu, jobs)),
        reference=task.reference)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    print(f"in-process: {task.label} ({cls.name}) in the foreground; nothing is cached",
          file=sys.stderr)
    try:
        metrics = run_checked(cls, ctx, protect=False)
    except ContractError as e:
        print(f"error: {task.label} failed: {e}", file=sys.stderr)
        return EXIT_BUILD_FAILED
    except Exception:
        traceback.print_exc()
        print(f"error: {task.label} failed in-process (traceback above)", file=sys.stderr)
        return EXIT_BUILD_FAILED
    print(json.dumps({"task": task.label, "metrics": metrics, "warnings": ctx.warnings,
                      "outputs": str(ctx.out_dir)}, indent=2, sort_keys=True))
    return EXIT_OK
