"""Judging a finished build: each target's gates, its manifest and folder, and each search's
choice (orchestrator/recipe/search.py). What the summary table and the exit code are made from."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from orchestrator.plan.graph import TargetPlan
from orchestrator.targets.summary import TargetRow


def judge(args: argparse.Namespace, s: Any, outcomes: dict[str, Any]
          ) -> tuple[bool, dict[str, Any], list[Any]]:
    """Judge every target (gates), write the finished ones, report failures and warnings.
    Returns (anything failed, per-target status, rows of the summary table)."""
    from orchestrator.targets.manifest import build_manifest

    failed = False
    targets: dict[str, Any] = {}
    for o in outcomes.values():
        if o.status == "fail":
            failed = True
            print(f"\nFAILED {o.error}", file=sys.stderr)
    table: list[TargetRow] = []
    searches: dict[tuple[str, str], list[Any]] = {}
    strict = bool(getattr(args, "strict", False))
    for tp in s.graph.targets:
        judged = (tp, *build_manifest(tp, s.graph, outcomes, s.plan.sources, strict))
        if tp.search is not None:
            searches.setdefault((tp.recipe.name, tp.search), []).append(judged)
            continue
        failed |= _one(s, f"{tp.recipe.name}/{tp.name}", judged, outcomes, targets, table)
    for (_, name), candidates in searches.items():
        failed |= _search(args, s, name, candidates, outcomes, targets, table)
    _note_stale(args, s)
    return failed, targets, table


def _one(s: Any, label: str, judged: tuple[Any, ...], outcomes: dict[str, Any],
         targets: dict[str, Any], table: list[TargetRow]) -> bool:
    """One target: skipped, written (ok or failed a gate), or left as it was (not finished)."""
    tp, manifest, failures, complete = judged
    if label in s.fit.targets:
        from orchestrator.targets.skipped import record_skip

        targets[label] = record_skip(s.out, tp, manifest, s.fit.targets[label])
        table.append(TargetRow(label, None, "skipped", [s.fit.targets[label]]))
        return False
    if complete:  # judged: ok, or failed a gate (then the manifest says why, with no engine)
        path = _write(s, tp, manifest, outcomes)
        targets[label] = {"status": manifest["status"], "manifest": str(path)}
    else:  # not finished: whatever an earlier build left there stays as it was
        targets[label] = {"status": "failed", "manifest": None}
    table.append(TargetRow(label, manifest if complete else None, targets[label]["status"],
                           failures))
    if failures:
        kept = "" if complete else f" (not finished; {s.out / tp.recipe.name / tp.name} left as it was)"
        print(f"target {label} FAILED{kept}:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
    _warnings(label, manifest)
    return bool(failures)


def _write(s: Any, tp: TargetPlan, manifest: dict[str, Any], outcomes: dict[str, Any]) -> Any:
    from orchestrator.targets.bundle import add_bundle
    from orchestrator.targets.materialize import write_target

    source = s.plan.sources.get(f"src:{tp.recipe.name}:model")
    fmt = s.graph.task(tp.steps[-1]).info.cls.output_formats.get("model", "") if tp.steps else ""
    add_bundle(manifest, s.store, source.path if source else None, fmt)
    return write_target(s.out, tp, manifest, s.store, outcomes, s.graph)


def _warnings(label: str, manifest: dict[str, Any]) -> None:
    for step in manifest["steps"]:
        for w in step["warnings"]:
            print(f"warning: {label} {step['step']}: {w}", file=sys.stderr)
    for name, section in [*manifest["checks"].items(), ("benchmark", manifest["benchmark"])]:
        for w in section.get("warnings", []):
            print(f"warning: {label} {name}: {w}", file=sys.stderr)


def _search(args: argparse.Namespace, s: Any, name: str, candidates: list[Any],
            outcomes: dict[str, Any], targets: dict[str, Any], table: list[TargetRow]) -> bool:
    """A search target: its candidates' rows, the choice, and the winner written as the target
    (a failed manifest listing every variant when none passed)."""
    from orchestrator.recipe import search

    recipe = candidates[0][0].recipe
    plan = recipe.searches[name]
    label = f"{recipe.name}/{name}"
    rows = []
    for tp, manifest, failures, complete in candidates:
        cand = recipe.candidate(tp.name)
        skip = s.fit.targets.get(f"{recipe.name}/{tp.name}")
        status = "skipped" if skip else (manifest["status"] if complete else "not finished")
        rows.append(search.row(tp.name.split("~", 1)[1], cand.variant, cand.params,
                               manifest if complete else None, status,
                               [skip] if skip else failures, plan.spec.at))
    judged = [c for c in candidates if c[3]]
    machine = search.machine_class([c[1] for c in judged])
    section = search.choose(plan.spec, rows, machine, _previous(args, s, recipe.name, name))
    if plan.left_out:
        section["left_out"] = plan.left_out
    winner = next((c for c in candidates if c[0].name.split("~", 1)[1] == section["winner"]), None)
    if winner is None:
        return _no_winner(s, label, name, candidates, section, outcomes, targets, table)
    tp, manifest, failures, _ = winner
    chosen = {**json.loads(json.dumps(manifest)), "target": name, "search": section}
    tp = dataclasses.replace(tp, name=name)
    print(f"search {label}: {section['winner']} chosen ({section['why']})", file=sys.stderr)
    return _one(s, label, (tp, chosen, failures, True), outcomes, targets, table)


def _no_winner(s: Any, label: str, name: str, candidates: list[Any], section: dict[str, Any],
               outcomes: dict[str, Any], targets: dict[str, Any], table: list[TargetRow]) -> bool:
    if all(s.fit.targets.get(f"{c[0].recipe.name}/{c[0].name}") for c in candidates):
        why = s.fit.targets[f"{candidates[0][0].recipe.name}/{candidates[0][0].name}"]
        targets[label] = {"status": "skipped", "reason": why, "manifest": None}
        table.append(TargetRow(label, None, "skipped", [why]))
        return False
    if not any(c[3] for c in candidates):  # nothing finished: the folder stays as it was
        targets[label] = {"status": "failed", "manifest": None}
        table.append(TargetRow(label, None, "failed", ["no variant finished"]))
        return True
    tp, manifest, _, _ = next(c for c in candidates if c[3])
    reasons = [f"{r['name']}: {r.get('why', r['status'])}" for r in section["variants"]]
    failures = [f"search: no variant passed its gates ({'; '.join(reasons)})"]
    failed = {**json.loads(json.dumps(manifest)), "target": name, "search": section,
              "status": "failed", "failures": failures, "artifacts": []}
    return _one(s, label, (dataclasses.replace(tp, name=name), failed, failures, True), outcomes,
                targets, table)


def _previous(args: argparse.Namespace, s: Any, recipe: str, name: str) -> dict[str, Any] | None:
    """The search section of the manifest this target has now: committed (--manifests) if
    there is one, else the last build's folder."""
    from pathlib import Path

    places = []
    committed = getattr(args, "manifests", None)
    if committed:
        places.append(Path(committed) / recipe / f"{name}.json")
    places.append(s.out / recipe / name / "manifest.json")
    for path in places:
        try:
            section = json.loads(path.read_text()).get("search")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(section, dict):
            return section
    return None


def _note_stale(args: argparse.Namespace, s: Any) -> None:
    if args.targets or getattr(args, "only", None):
        return
    for recipe in s.recipes:
        folder = s.out / recipe.name
        stale = sorted(d.name for d in folder.glob("*/")
                       if (d / "manifest.json").exists() and d.name not in recipe.model.targets)
        for name in stale:
            print(f"note: {folder / name} belongs to no target of {recipe.path} any more; "
                  "delete it if it is not needed", file=sys.stderr)
