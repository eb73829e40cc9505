"""Per-target manifests (deterministic, reviewed in pull requests) and run logs (volatile).

manifest.json: sorted keys, indent 2, trailing newline; no timestamps, durations, cache flags or
host names. run-log.json next to it holds those volatile facts.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from orchestrator.graph import BuildGraph, CheckPlan, TargetPlan, Task
from orchestrator.signals import signals_held
from orchestrator.store.base import ActionEntry, Blob
from orchestrator.store.local import LocalStore

MANIFEST_SCHEMA = 1
MANIFEST = "manifest.json"
RUN_LOG = "run-log.json"


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def placed(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file or tree of a target folder: the artifacts and the bundle's files."""
    return [*manifest.get("artifacts", []), *(manifest.get("bundle") or {}).get("files", [])]


def _input_sizes(task: Task, outcomes: dict[str, Any], sources: dict[str, Any]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for name, (node, out) in task.inputs.items():
        if node in sources:
            sizes[name] = sources[node].blob.size
        elif node in outcomes and outcomes[node].entry is not None:
            sizes[name] = outcomes[node].entry.outputs[out]["size"]
    return sizes


def _step_record(task: Task, entry: ActionEntry, key: str,
                 sizes: dict[str, int]) -> dict[str, Any]:
    doc = entry.doc
    record = {
        "step": task.step,
        "version": doc["version"],
        "plugin": doc["plugin"],
        "key": key,
        "params": task.params,  # what was keyed and ran (completed; unused params at defaults)
        "inputs": {k: {"digest": v, "size": sizes.get(k)} for k, v in doc["inputs"].items()},
        "outputs": {k: {"digest": o["digest"], "size": o["size"], "kind": o["kind"]}
                    for k, o in entry.outputs.items()},
        "toolchain": doc["toolchain"],
        "metrics": entry.metrics,
        "warnings": entry.warnings,
    }
    if getattr(task.info.cls, "reproducible", True) is False:  # e.g. TensorRT plans
        record["reproducible"] = False
    return record


def target_params(task: Task, cp: CheckPlan) -> Any:
    """The params a target judges its check with: the shared task's keyed params plus this
    target's own gates (another target sharing the task may gate it differently)."""
    cls = task.info.cls
    gates = cp.use.params.model_dump(include=set(cls.gate_fields))
    return cls.Params.model_validate({**task.params, **gates})


def check_section(name: str, cp: CheckPlan, graph: BuildGraph, outcomes: dict[str, Any],
                  strict: bool = False) -> tuple[dict[str, Any], list[str]] | None:
    """One check's manifest section and failures, judged by the check itself (``Step.judge``)
    with this target's gates; None when its task (or its reference task) did not complete.
    A gate the check could not decide (``Verdict.unjudged``) is a warning, a failure if strict."""
    task = graph.task(cp.task)
    o = outcomes.get(cp.task)
    ro = outcomes.get(cp.reference) if cp.reference else None
    if o is None or o.entry is None or (cp.reference and (ro is None or ro.entry is None)):
        return None
    cls = task.info.cls
    params = target_params(task, cp)
    ref_metrics = ro.entry.metrics if ro is not None and ro.entry is not None else None
    verdict = cls.judge(params, o.entry.metrics, ref_metrics)
    section, problems = dict(verdict.summary), list(verdict.failures)
    section["key"] = o.key
    if verdict.unjudged:
        section["unjudged"] = list(verdict.unjudged)
        if strict:
            problems += [f"{u} (--strict)" for u in verdict.unjudged]
    warnings = sorted(set(o.entry.warnings) | set(ro.entry.warnings if ro and ro.entry else [])
                      | set(verdict.unjudged))
    if warnings:
        section["warnings"] = warnings
    if cls.gate_fields:
        section["gate"] = params.model_dump(mode="json", include=set(cls.gate_fields))
        section["passed"] = not problems
    return section, [f"check {name}: {p}" for p in problems]


def cheap_failure(tp: TargetPlan, graph: BuildGraph, outcomes: dict[str, Any]) -> str | None:
    """Why the target already failed on its untimed checks (parity, accuracy, size), once they
    all finished: ``parity failed (...)``; None when none failed or one has not finished."""
    for name, cp in sorted(tp.checks.items()):
        if graph.task(cp.task).info.cls.measures_speed:
            continue
        if any(i not in outcomes for i in cp.ids()):
            return None
        judged = check_section(name, cp, graph, outcomes)
        if judged is None:
            return f"{name} did not complete"
        if judged[1]:
            first = judged[1][0].removeprefix(f"check {name}: ")
            return f"{name} failed ({first})"
    return None


def judge_checks(tp: TargetPlan, graph: BuildGraph, outcomes: dict[str, Any],
                 strict: bool = False) -> tuple[dict[str, dict[str, Any]], list[str], bool]:
    """The manifest sections of a target's checks (``checks`` by name, and the sections checks
    declare as their ``manifest_section``), the failures, and whether every check completed."""
    sections: dict[str, dict[str, Any]] = {"checks": {}, "benchmark": {}}
    failures: list[str] = []
    complete = True
    for name, cp in sorted(tp.checks.items()):
        where = graph.task(cp.task).info.cls.manifest_section
        o = outcomes.get(cp.task)
        if o is not None and getattr(o, "pruned", False):  # cheap gates first: not timed
            pruned = {"not_measured": o.reasons[0] if o.reasons else "not measured"}
            if where == "checks":
                sections["checks"][name] = pruned
            else:
                sections[where] = pruned
            continue
        judged = check_section(name, cp, graph, outcomes, strict)
        if judged is None:
            failures.append(f"check {name} did not complete")
            complete = False
            continue
        section, problems = judged
        failures += problems
        if where == "checks":
            sections["checks"][name] = section
        else:
            sections[where] = section
    return sections, failures, complete


def build_manifest(tp: TargetPlan, graph: BuildGraph, outcomes: dict[str, Any],
                   sources: dict[str, Any], strict: bool = False
                   ) -> tuple[dict[str, Any], list[str], bool]:
    """The manifest of one target, the reasons it failed (empty when ok) and whether every task
    of the target finished (False: a task failed or was skipped, so there is nothing to judge)."""
    recipe = tp.recipe
    src = sources.get(f"src:{recipe.name}:model")
    steps, failures, complete = _steps_section(tp, graph, outcomes, sources)
    sections, problems, judged = judge_checks(tp, graph, outcomes, strict)
    failures += problems
    complete = complete and judged
    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "status": "failed" if failures else "ok",
        "recipe": {"name": recipe.name, "digest": recipe.digest},
        "target": tp.name,
        "hardware": recipe.hardware_of(tp.name).record(),
        "model": {
            "source": recipe.model.model.source,
            "revision": recipe.model.model.revision,
            "task": recipe.model.model.task,
            "digest": src.blob.digest if src else None,
            "size": src.blob.size if src else None,
        },
        "steps": steps,
        "artifacts": _artifacts(graph, outcomes, tp) if not failures else [],
        "checks": sections["checks"],
        "benchmark": sections["benchmark"],
    }
    if failures:
        manifest["failures"] = failures
    return manifest, failures, complete


def _steps_section(tp: TargetPlan, graph: BuildGraph, outcomes: dict[str, Any],
                   sources: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str], bool]:
    """The steps' records, why steps did not finish, and whether all of them did."""
    failures: list[str] = []
    complete = True
    steps = []
    for tid in tp.steps:
        o = outcomes.get(tid)
        task = graph.task(tid)
        if o is None or o.entry is None:
            complete = False
            failures.append(f"step {task.label} {'failed' if o and o.status == 'fail' else 'did not run'}"
                            + (f": {o.reasons[0]}" if o and o.status == "skip" and o.reasons else ""))
            continue
        steps.append(_step_record(task, o.entry, o.key, _input_sizes(task, outcomes, sources)))
    return steps, failures, complete


def _artifacts(graph: BuildGraph, outcomes: dict[str, Any], tp: TargetPlan) -> list[dict[str, Any]]:
    """What the target's last step made: the files a deployment takes."""
    fo = outcomes.get(graph.task(tp.steps[-1]).id)
    if fo is None or fo.entry is None:
        return []
    return [{"name": name, "path": o["filename"].rstrip("/"), "digest": o["digest"],
             "size": o["size"], "kind": o["kind"]} for name, o in sorted(fo.entry.outputs.items())]


def write_target(out_root: Path, tp: TargetPlan, manifest: dict[str, Any], store: LocalStore,
                 outcomes: dict[str, Any], graph: BuildGraph) -> Path:
    """Materialize the target's artifacts (hard links into the cache) and its manifest.

    The folder changes as a whole or not at all: the new version is built beside it and swapped
    in with one atomic exchange (renameat2), with SIGINT/SIGTERM held until the swap is done, so
    the manifest always describes the bytes next to it. A folder that already holds exactly this
    manifest and these artifacts is left alone (a no-op build rewrites nothing but the run log).
    """
    tdir = out_root / tp.recipe.name / tp.name
    tdir.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(manifest)
    run_log = dumps({
        "host": os.uname().nodename,
        "tasks": [
            {"label": graph.task(t).label, "status": outcomes[t].status,
             "duration_s": round(outcomes[t].duration, 3), "key": outcomes[t].key}
            for t in tp.task_ids() if t in outcomes
        ],
    })
    _sweep_staging(tdir)
    if not in_place(tdir, manifest, text, store):
        staging = tdir.with_name(f".{tdir.name}.new-{os.getpid()}")
        _remove_tree(staging)
        staging.mkdir()
        try:
            for a in placed(manifest):
                store.materialize(Blob(a["kind"], a["digest"], a["size"]), staging / a["path"])
            (staging / MANIFEST).write_text(text)
            (staging / RUN_LOG).write_text(run_log)
            with signals_held():
                swap_in(staging, tdir)
        finally:  # after the exchange it holds the previous version; a second Ctrl-C waits
            with signals_held():
                _remove_tree(staging)
        for a in placed(manifest):  # copies (cache on another file system) moved with it
            files = ({a["path"]: a["digest"]} if a["kind"] == "file" else
                     {f"{a['path']}/{rel}": d for rel, (d, _) in store.tree_files(a["digest"]).items()})
            for rel, digest in files.items():
                store.remember_placed(digest, tdir / rel)
        return tdir / MANIFEST
    tmp_log = tdir / f".{RUN_LOG}.{os.getpid()}.tmp"
    tmp_log.write_text(run_log)
    os.replace(tmp_log, tdir / RUN_LOG)
    return tdir / MANIFEST


def in_place(tdir: Path, manifest: dict[str, Any], text: str, store: LocalStore) -> bool:
    """True when tdir holds exactly this manifest and these artifacts (linked to their blobs)."""
    try:
        if (tdir / MANIFEST).read_text() != text:
            return False
        for a in placed(manifest):
            dest = tdir / a["path"]
            if a["kind"] == "file":
                if not store.is_placed(a["digest"], dest):
                    return False
                continue
            files = store.tree_files(a["digest"])
            present = {p.relative_to(dest).as_posix() for p in dest.rglob("*")
                       if not p.is_dir() or p.is_symlink()}
            if present != set(files) or not all(store.is_placed(d, dest / rel)
                                                 for rel, (d, _) in files.items()):
                return False
    except (OSError, ValueError, KeyError):
        return False
    return True


def swap_in(new: Path, dest: Path) -> None:
    """Put folder ``new`` at ``dest`` in one step; afterwards ``new`` holds what dest held."""
    if not dest.exists() and not dest.is_symlink():
        os.rename(new, dest)
        return
    if _exchange(new, dest):
        return
    # no renameat2 here (an old kernel or file system): two renames; dest is briefly absent,
    # never a mix of two versions
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    _remove_tree(old)
    os.rename(dest, old)
    os.rename(new, dest)
    os.rename(old, new)


def _exchange(a: Path, b: Path) -> bool:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return bool(renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)),
                          rename_exchange) == 0)


def _sweep_staging(tdir: Path) -> None:
    """Remove staging folders of this target left by a build that was killed (-9)."""
    for p in tdir.parent.glob(f".{tdir.name}.*-*"):
        pid = p.name.rpartition("-")[2]
        if pid.isdigit() and p.name.startswith((f".{tdir.name}.new-", f".{tdir.name}.old-")) \
                and not _alive(int(pid)):
            _remove_tree(p)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)
