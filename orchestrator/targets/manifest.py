"""Per-target manifests (deterministic, reviewed in pull requests) and run logs (volatile).

manifest.json: sorted keys, indent 2, trailing newline; no timestamps, durations, cache flags or
host names. run-log.json next to it holds those volatile facts.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.plan.graph import BuildGraph, CheckPlan, TargetPlan, Task
from orchestrator.store.base import ActionEntry

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
