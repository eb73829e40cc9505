"""Committed manifests: `--manifests DIR` writes `DIR/<recipe>/<target>.json` for review.

Only a target that was built and judged in this build is written (ok, or failed a gate: both
were measured here); a target skipped here (no CUDA device, a failed upstream task) never
overwrites the committed manifest that another machine wrote. The text is the manifest of
`build/` byte for byte, so two builds of the same inputs from empty caches write identical
files apart from the fields in MEASURED.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from orchestrator.hashing import atomic_write
from orchestrator.review.compare import flatten
from orchestrator.review.manifestset import MEASURED, measured  # noqa: F401 - re-exported
from orchestrator.targets.manifest import dumps


def target_path(folder: Path, label: str) -> Path:
    recipe, _, target = label.partition("/")
    return folder / recipe / f"{target}.json"


def write_committed(folder: Path, table: list[Any]) -> list[Path]:
    """Write each judged target's manifest; returns the files that changed."""
    written = []
    for row in table:
        label, manifest = row.label, row.manifest
        if manifest is None:
            continue
        path = target_path(folder, label)
        text = dumps(manifest)
        try:
            if path.read_text() == text:
                continue
        except OSError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text)
        written.append(path)
    return written


def reproducible_part(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's leaves (dotted paths) that must be identical across two builds."""
    patterns = measured(manifest)
    return {k: v for k, v in flatten(manifest, lists=True).items()
            if not any(fnmatch.fnmatchcase(k, p) for p in patterns)}
