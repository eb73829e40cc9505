"""Targets this machine cannot build or measure (orchestrator.plan.fit): their `skipped` manifest and
`--require-all`.

A skipped manifest says why, and lists the hardware-independent steps that did build. It never
replaces a manifest of a target that was built (here or elsewhere): that stays as it was.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from orchestrator.errors import EXIT_BUILD_FAILED, EXIT_OK
from orchestrator.hashing import atomic_write
from orchestrator.targets.manifest import MANIFEST, dumps

KEEP = ("schema", "recipe", "target", "hardware", "model", "steps")


def skipped_manifest(manifest: dict[str, Any], reason: str) -> dict[str, Any]:
    """The manifest of a skipped target: what build_manifest gave, judged as skipped."""
    out = {k: manifest[k] for k in KEEP if k in manifest}
    out.update(status="skipped", skipped=reason, artifacts=[], checks={}, benchmark={})
    return out


def _existing_status(path: Path) -> str | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value.get("status") if isinstance(value, dict) else None


def record_skip(out: Path, tp: Any, manifest: dict[str, Any], reason: str) -> dict[str, Any]:
    """Write the skipped manifest unless the folder holds a built target's; say so on stderr.
    Returns the target's entry of the build summary."""
    label = f"{tp.recipe.name}/{tp.name}"
    path = out / tp.recipe.name / tp.name / MANIFEST
    print(f"target {label} SKIPPED: {reason}", file=sys.stderr)
    status = _existing_status(path)
    if status not in (None, "skipped"):
        print(f"  ({path} of an earlier {status} build is kept as it was)", file=sys.stderr)
        return {"status": "skipped", "reason": reason, "manifest": None}
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(skipped_manifest(manifest, reason))
    if status is None or path.read_text() != text:
        atomic_write(path, text)
    return {"status": "skipped", "reason": reason, "manifest": str(path)}


def require_all(args: argparse.Namespace, targets: dict[str, Any]) -> int:
    """Exit code of a build with no failure: 2 under --require-all when a target was skipped."""
    skipped = sorted(label for label, t in targets.items() if t["status"] == "skipped")
    if skipped and getattr(args, "require_all", False):
        print(f"--require-all: {len(skipped)} target(s) skipped on this machine: "
              f"{', '.join(skipped)}", file=sys.stderr)
        return EXIT_BUILD_FAILED
    return EXIT_OK
