"""What a build leaves beyond `build/`: the last-run record, the history line, the committed
manifests (`--manifests DIR`) and, after a multi-recipe build that did work, the HTML report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from orchestrator import history


def after_build(args: argparse.Namespace, s: Any, outcomes: dict[str, Any], table: list[Any]) -> None:
    cache = s.store.root
    history.write_last_run(cache, s.graph, outcomes)
    manifests = Path(args.manifests) if getattr(args, "manifests", None) else None
    if manifests is not None:
        from orchestrator.committed import write_committed

        for path in write_committed(manifests, table):
            print(f"wrote {path}", file=sys.stderr)
    path = history.history_path(cache, manifests)
    did_work = history.append_history(path, table, outcomes)
    if did_work and len(s.recipes) > 1:
        from orchestrator.commands.report import write_report

        print(f"report: {write_report(path, Path(s.out) / 'report.html')}", file=sys.stderr)
