"""What a build leaves beyond `build/`: the last-run record, the history line, the committed
manifests (`--manifests DIR`) and, after a multi-recipe build that did work, the HTML report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from orchestrator.review import history


def after_build(args: argparse.Namespace, s: Any, outcomes: dict[str, Any], table: list[Any]) -> None:
    cache = s.store.root
    history.write_last_run(cache, s.graph, outcomes)
    folders = manifest_folders(args, s.recipes)
    for name, folder in folders.items():
        from orchestrator.review.committed import write_committed

        rows = [r for r in table if r.recipe == name]
        for path in write_committed(folder, rows):
            print(f"wrote {path}", file=sys.stderr)
    manifests = next(iter(folders.values()), None)
    path = history.history_path(cache, manifests)
    did_work = history.append_history(path, table, outcomes)
    if did_work and len(s.recipes) > 1:
        from orchestrator.review.reportpage import MissingReportExtra, write_report

        try:
            print(f"report: {write_report(path, Path(s.out) / 'report.html')}", file=sys.stderr)
        except MissingReportExtra as e:
            print(f"no report: {e}", file=sys.stderr)


def manifest_folders(args: argparse.Namespace, recipes: list[Any]) -> dict[str, Path]:
    """Per recipe name, the committed manifests folder: --manifests DIR for every recipe, else
    the recipe's own `manifests:` key (relative to the recipe file)."""
    given = getattr(args, "manifests", None)
    out: dict[str, Path] = {}
    for r in recipes:
        if given:
            out[r.name] = Path(given)
        elif r.model.manifests:
            out[r.name] = r.resolve(r.model.manifests)
    return out
