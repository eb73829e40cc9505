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
from orchestrator.targets.manifest import dumps

# Fields that two honest builds of the same inputs may disagree on: measured latencies and
# everything the benchmark saw; parity figures, where the CPU's instruction set (AVX-512, VNNI,
# AMX) changes the numerics. The digests of engines recorded as not byte-reproducible (a step
# class with `reproducible = False`, as TensorRT plans are) are added by measured().
MEASURED = (
    "benchmark.*",
    "checks.*.max_abs_diff", "checks.*.mean_cosine", "checks.*.min_cosine",
    "checks.*.top1_agreement", "search.*",
)


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


def measured(manifest: dict[str, Any]) -> list[str]:
    """MEASURED, plus, from the first step whose class says `reproducible = False` (its output
    bytes differ from build to build, as TensorRT plans do), every digest and key after it."""
    patterns = list(MEASURED)
    steps = manifest.get("steps") or []
    first = next((i for i, s in enumerate(steps) if s.get("reproducible") is False), None)
    if first is not None:
        patterns += [f"steps.{i}.{f}" for i in range(first, len(steps))
                     for f in ("key", "outputs.*.digest", "outputs.*.size", "inputs.*.digest",
                               "inputs.*.size", "metrics.*")]
        patterns += ["artifacts.*.digest", "artifacts.*.size", "checks.*.key", "bundle.files.*"]
    return patterns


def reproducible_part(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's leaves (dotted paths) that must be identical across two builds."""
    patterns = measured(manifest)
    return {k: v for k, v in flatten(manifest, lists=True).items()
            if not any(fnmatch.fnmatchcase(k, p) for p in patterns)}
