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
from orchestrator.store.base import Blob
from orchestrator.store.local import LocalStore

MANIFEST_SCHEMA = 1
MANIFEST = "manifest.json"
RUN_LOG = "run-log.json"


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _input_sizes(task: Task, outcomes: dict[str, Any], sources: dict[str, Any]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for name, (node, out) in task.inputs.items():
        if node in sources:
            sizes[name] = sources[node].blob.size
        elif node in outcomes and outcomes[node].entry is not None:
            sizes[name] = outcomes[node].entry["outputs"][out]["size"]
    return sizes


def _step_record(task: Task, entry: dict[str, Any], key: str,
                 sizes: dict[str, int]) -> dict[str, Any]:
    doc = entry["doc"]
    return {
        "step": task.step,
        "version": doc["version"],
        "plugin": doc["plugin"],
        "key": key,
        "params": task.params,  # what was keyed and ran (completed; unused params at defaults)
        "inputs": {k: {"digest": v, "size": sizes.get(k)} for k, v in doc["inputs"].items()},
        "outputs": {k: {"digest": o["digest"], "size": o["size"], "kind": o["kind"]}
                    for k, o in entry["outputs"].items()},
        "toolchain": doc["toolchain"],
        "metrics": entry["metrics"],
        "warnings": entry["warnings"],
    }


def target_params(task: Task, cp: CheckPlan) -> Any:
    """The params a target judges its check with: the shared task's keyed params plus this
    target's own gates (another target sharing the task may gate it differently)."""
    cls = task.info.cls
    gates = cp.use.params.model_dump(include=set(cls.gate_fields))
    return cls.Params.model_validate({**task.params, **gates})


def build_manifest(tp: TargetPlan, graph: BuildGraph, outcomes: dict[str, Any],
                   sources: dict[str, Any]) -> tuple[dict[str, Any], list[str], bool]:
    """The manifest of one target, the reasons it failed (empty when ok) and whether every task
    of the target finished (False: a task failed or was skipped, so there is nothing to judge)."""
    recipe = tp.recipe
    target = recipe.model.targets[tp.name]
    src = sources.get(f"src:{recipe.name}:model")
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
    checks: dict[str, Any] = {}
    benchmark: dict[str, Any] = {}
    for name, cp in sorted(tp.checks.items()):
        cid, rid = cp.task, cp.reference
        task = graph.task(cid)
        o = outcomes.get(cid)
        ro = outcomes.get(rid) if rid else None
        if o is None or o.entry is None or (rid and (ro is None or ro.entry is None)):
            failures.append(f"check {name} did not complete")
            complete = False
            continue
        cls = task.info.cls
        params = target_params(task, cp)
        ref_metrics = ro.entry["metrics"] if ro is not None and ro.entry is not None else None
        section = dict(cls.summarize(params, o.entry["metrics"], ref_metrics))
        problems = cls.gate(params, o.entry["metrics"], ref_metrics)
        section["key"] = o.key
        warnings = sorted(set(o.entry["warnings"]) | set(ro.entry["warnings"] if ro and ro.entry else []))
        if warnings:
            section["warnings"] = warnings
        if cls.gate_fields:
            section["gate"] = params.model_dump(mode="json", include=set(cls.gate_fields))
            section["passed"] = not problems
        failures.extend(f"check {name}: {p}" for p in problems)
        if name == "benchmark":
            benchmark = section
        else:
            checks[name] = section
    final = graph.task(tp.steps[-1])
    fo = outcomes.get(final.id)
    artifacts = []
    if fo is not None and fo.entry is not None:
        for name, o in sorted(fo.entry["outputs"].items()):
            artifacts.append({"name": name, "path": o["filename"].rstrip("/"), "digest": o["digest"],
                              "size": o["size"], "kind": o["kind"]})
    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "status": "failed" if failures else "ok",
        "recipe": {"name": recipe.name, "digest": recipe.digest},
        "target": tp.name,
        "hardware": target.hardware.model_dump(mode="json"),
        "model": {
            "source": recipe.model.model.source,
            "revision": recipe.model.model.revision,
            "task": recipe.model.model.task,
            "digest": src.blob.digest if src else None,
            "size": src.blob.size if src else None,
        },
        "steps": steps,
        "artifacts": artifacts if not failures else [],
        "checks": checks,
        "benchmark": benchmark,
    }
    if failures:
        manifest["failures"] = failures
    return manifest, failures, complete


def write_target(out_root: Path, tp: TargetPlan, manifest: dict[str, Any], store: LocalStore,
                 outcomes: dict[str, Any], graph: BuildGraph) -> Path:
    """Materialize the target's artifacts (hard links into the cache) and write its manifest."""
    tdir = out_root / tp.recipe.name / tp.name
    tdir.mkdir(parents=True, exist_ok=True)
    old = tdir / MANIFEST
    keep = {a["path"] for a in manifest["artifacts"]}
    if old.exists():  # remove artifacts of the previous build that this one does not have
        try:
            previous = json.loads(old.read_text())
            for a in previous.get("artifacts", []):
                p = tdir / a["path"]
                if a["path"] not in keep and (p.exists() or p.is_symlink()) and ".." not in a["path"]:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        except (ValueError, OSError, KeyError, TypeError):
            pass
    for a in manifest["artifacts"]:
        store.materialize(Blob(a["kind"], a["digest"], a["size"]), tdir / a["path"])
    text = dumps(manifest)
    path = tdir / MANIFEST
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    run_log = {
        "host": os.uname().nodename,
        "tasks": [
            {"label": graph.task(t).label, "status": outcomes[t].status,
             "duration_s": round(outcomes[t].duration, 3), "key": outcomes[t].key}
            for t in tp.task_ids()
            if t in outcomes
        ],
    }
    tmp_log = tdir / f".{RUN_LOG}.{os.getpid()}.tmp"
    tmp_log.write_text(dumps(run_log))
    os.replace(tmp_log, tdir / RUN_LOG)
    return path
