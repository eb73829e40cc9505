"""`deploy-build report [--out report.html] [--branch NAME|all]`: the nightly report page.

The page itself is `orchestrator.review.reportpage` (what a build calls too, after a multi-recipe build
that did work); this module finds the history and the output path. Without altair and
vl-convert (the `report` extra) it exits 1 and says how to install them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from orchestrator.errors import EXIT_OK
from orchestrator.review.reportpage import write_report

__all__ = ["run", "write_report"]


def run(args: argparse.Namespace) -> int:
    from orchestrator.review.history import history_path
    from orchestrator.session import project_root

    root = project_root(Path.cwd())
    if args.history:
        path = Path(args.history)
    else:
        cache = Path(args.cache or os.environ.get("DEPLOY_BUILD_CACHE") or root / "cache")
        path = history_path(cache, Path(args.manifests) if args.manifests else None)
    out = Path(args.out) if args.out else root / "build" / "report.html"
    written = write_report(path, out, getattr(args, "branch", None))
    print(f"report: {written}", file=sys.stderr)
    return EXIT_OK
