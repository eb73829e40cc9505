"""Runs one task in its own process: `python -m orchestrator.run.worker SPEC.json`.

The spec names the step class, its params, input paths, the output folder and the store. On
success the worker stores the outputs as blobs and writes a small result JSON; it never writes an
action entry (the orchestrator does, after checking the result). Anything else (an exception, a
non-zero exit, a native crash) leaves no result, and the task fails.

A worker dies with the orchestrator that started it: it asks the kernel for SIGKILL when its
parent dies (PR_SET_PDEATHSIG) and exits at once if that parent is already gone. It also holds a
shared lock on its scratch folder, so a later build's sweep never removes a folder still in use.
"""

from __future__ import annotations

import errno
import faulthandler
import json
import os
import signal
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.hashing import atomic_write, canonical_json
from orchestrator.run import sandbox


@dataclass(frozen=True)
class TaskSpec:
    """What a worker needs to run one task: the step (by its registry ref), the keyed params,
    where its inputs are and where to write, and the store its outputs go to. Written as JSON
    beside the task's scratch folder; the result JSON goes to ``result``."""

    ref: dict[str, str]  # how the worker finds the step class (registry.load_step)
    step: str
    params: dict[str, Any]  # what was keyed: completed, unused params at their defaults
    inputs: dict[str, str]  # input name -> path
    out_dir: str
    result: str
    hardware: dict[str, Any]
    model: dict[str, Any]
    threads: int
    store: str
    reference: bool = False
    # other tasks of the same step run together with this one (Step.run_group: benchmarks of one
    # model source timed in one window); each writes its own result file
    group: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TaskSpec:
        return cls(**d)


class ContractError(Exception):
    """A step broke its contract: an output that is not what its format says, or a write into
    its inputs. The task fails and nothing is stored."""


def run_checked(cls: Any, ctx: Any, protect: bool = True) -> dict[str, Any]:
    """Run a step on its context and hold it to its contract: its inputs unchanged (mounted
    read-only where the machine allows, when ``protect``), metrics JSON can hold, each output
    valid for its format. Raises ContractError (or the step's own error); returns the metrics."""
    from orchestrator.formats import validate_output

    out_dir = ctx.out_dir
    guarded = list(ctx.inputs.values())
    before = sandbox.snapshot(guarded)
    protected = protect and sandbox.read_only(sorted(before))
    try:
        metrics = cls().run(ctx) or {}
    except OSError as e:
        target = sandbox.is_write_to(e, ctx.inputs)
        if target is None:
            raise
        raise ContractError(f"step {cls.name!r} tried to write into its input {target!r} "
                            f"({e.strerror}); inputs are read-only links into the cache: write "
                            "new files under ctx.output(...) instead") from None
    touched = sandbox.changed(before, sandbox.snapshot(guarded))
    if touched:
        how = "" if protected else " (this machine could not mount them read-only)"
        raise ContractError(f"step {cls.name!r} wrote into its input "
                            f"{sandbox.input_of(touched[0], ctx.inputs)!r}{how}; inputs "
                            "are read-only links into the cache: write new files under "
                            "ctx.output(...) instead. The cache re-checks that blob before it "
                            "is used again")
    if not isinstance(metrics, dict):
        raise TypeError(f"{cls.__name__}.run must return a dict of metrics, got {type(metrics)}")
    canonical_json(metrics)  # fails early on NaN or values JSON cannot hold
    for name, filename in cls.outputs.items():
        path = out_dir / filename.rstrip("/")
        if cls.kind == "check" and not path.exists():
            continue  # a check's outputs are optional
        fmt = cls.output_formats.get(name, "")
        problem = validate_output(fmt, path)
        if problem:
            raise ContractError(f"step {cls.name!r} wrote an invalid {fmt} output {name!r} "
                                f"({filename}): {problem}; nothing was cached")
    return metrics


def _context(cls: Any, spec: TaskSpec) -> Any:
    from orchestrator.step import HardwareView, ModelInfo, StepContext

    out_dir = Path(spec.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return StepContext(
        params=cls.Params.model_validate(spec.params),
        inputs={k: Path(v) for k, v in spec.inputs.items()},
        out_dir=out_dir,
        outputs=dict(cls.outputs),
        hardware=HardwareView(spec.hardware, tuple(cls.hardware_keys), cls.name),
        model=ModelInfo(**spec.model),
        threads=spec.threads,
        reference=spec.reference,
    )


def _stored(cls: Any, spec: TaskSpec, ctx: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    """The task's outputs stored as blobs: its result (outputs, metrics, warnings)."""
    from orchestrator.store.local import LocalStore

    out_dir = Path(spec.out_dir)
    store = LocalStore(spec.store)
    outputs: dict[str, Any] = {}
    try:
        for name, filename in cls.outputs.items():
            path = out_dir / filename.rstrip("/")
            if cls.kind == "check" and not path.exists():
                continue  # a check's outputs are optional
            if filename.endswith("/"):
                if not path.is_dir() or not any(path.iterdir()):
                    raise RuntimeError(f"step {cls.name!r} did not write output folder {name!r}")
                blob = store.put_tree(path)
            else:
                if not path.is_file():
                    raise RuntimeError(f"step {cls.name!r} did not write output {name!r} ({filename})")
                blob = store.put_file(path)
            outputs[name] = {**blob.to_json(), "filename": filename}
    finally:
        store.close()
    return {"outputs": outputs, "metrics": metrics, "warnings": ctx.warnings}


def run_spec(spec: TaskSpec) -> dict[str, Any]:
    from orchestrator.registry import load_step

    cls = load_step(spec.ref)
    if spec.group:
        return run_group(cls, spec)
    ctx = _context(cls, spec)
    return _stored(cls, spec, ctx, run_checked(cls, ctx))


def write_result(path: str, result: dict[str, Any]) -> None:
    atomic_write(path, canonical_json(result))


def run_group(cls: Any, spec: TaskSpec) -> dict[str, Any]:
    """The task and the members of its group, run together by the step's ``run_group``. Each
    member's result goes to its own result file, or its error to ``<result>.error``; the
    task's own result is returned (its error raised), so the task is recorded as usual."""
    specs = [spec, *(TaskSpec.from_json(g) for g in spec.group)]
    ctxs = [_context(cls, s) for s in specs]
    guarded = [p for c in ctxs for p in c.inputs.values()]
    before = sandbox.snapshot(guarded)
    results = cls().run_group(ctxs)
    touched = sandbox.changed(before, sandbox.snapshot(guarded))
    if touched:
        raise ContractError(f"step {cls.name!r} wrote into its input {touched[0]}; inputs are "
                            "read-only links into the cache")
    for s, ctx, r in list(zip(specs, ctxs, results, strict=True))[1:]:
        try:
            if isinstance(r, BaseException):
                raise r
            canonical_json(r)
            write_result(s.result, _stored(cls, s, ctx, r))
        except Exception as e:  # noqa: BLE001 - that member fails alone, with its traceback
            Path(s.result + ".error").write_text("".join(traceback.format_exception(e)))
    if isinstance(results[0], BaseException):
        raise results[0]
    canonical_json(results[0])
    return _stored(cls, spec, ctxs[0], results[0])


PARENT_ENV = "DEPLOY_BUILD_PARENT_PID"
PR_SET_PDEATHSIG = 1


def die_with_parent() -> bool:
    """Have the kernel signal this process when its parent dies (SIGHUP, whose handler kills the
    worker's whole process group: orchestrator.host.procs); False when the parent named in the
    environment is gone already (then the caller exits: nobody would read the result)."""
    expected = os.environ.get(PARENT_ENV)
    if sys.platform.startswith("linux"):
        import ctypes

        from orchestrator.host.procs import on_parent_death

        signal.signal(signal.SIGHUP, on_parent_death)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGHUP, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the sweep still cleans up
            pass
    # checked after prctl: a parent that died before it is seen here, one that dies later kills us
    return not (expected and expected.isdigit() and os.getppid() != int(expected))


def _stop(signum: int, frame: Any) -> None:
    sys.exit(128 + signum)  # unwinds: temp files of a half-written blob are removed


def main(argv: list[str]) -> int:
    if not die_with_parent():
        print("the orchestrator that started this worker is gone; not running", file=sys.stderr)
        return 1
    faulthandler.enable()
    signal.signal(signal.SIGTERM, _stop)
    spec_path = Path(argv[0])
    from orchestrator.store.local import lock_folder

    lock_folder(spec_path.parent, create=False)  # held (fd left open) until this process ends
    spec = TaskSpec.from_json(json.loads(spec_path.read_text()))
    try:
        result = run_spec(spec)
    except ContractError as e:
        print(f"error: {e}", flush=True)
        return 1
    except Exception as e:
        disk = disk_trouble(e, spec)
        if disk is None:
            traceback.print_exc()
            return 1
        print(f"error: {disk}", flush=True)
        return 1
    try:
        write_result(spec.result, result)
    except OSError as e:
        print(f"error: {disk_trouble(e, spec) or e}", flush=True)
        return 1
    return 0


DISK = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


def disk_trouble(e: BaseException, spec: TaskSpec) -> str | None:
    """A full disk, a file size limit, a read-only or failing disk while the task wrote: what
    and where, and what to do, instead of a traceback (None: another error)."""
    if not isinstance(e, OSError) or e.errno not in DISK:
        return None
    from orchestrator.host.diskerrors import describe

    if not e.filename:  # a buffered write names no file: say where the task writes
        e.filename = f"the task's outputs in {Path(spec.out_dir).parent}, the cache {spec.store}"
    frames = traceback.extract_tb(e.__traceback__)
    at = f" (raised at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"the task could not write: {describe(e)}{at}; nothing was cached"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
