"""The table printed after a build: per target, status, size, parity, latency and speed-up.

Drawn from the manifests (the same figures a reviewer sees), in plain text: no terminal library
is imported, so a no-op build stays as fast as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

COLUMNS = ("target", "status", "size", "parity (mean/min, top-1)", "latency (median)",
           "speed-up vs PyTorch", "why not ok")


def _size(n: int | None) -> str:
    if not n:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _parity(checks: dict[str, Any]) -> str:
    p = checks.get("parity")
    if not p:
        return "-"
    text = f"{p.get('mean_cosine', 0):.6f}/{p.get('min_cosine', 0):.6f}"
    if "top1_agreement" in p:
        text += f", {p['top1_agreement']:.3f}"
    return text


def _point_speedup(point: dict[str, Any]) -> str:
    """``2.03x [1.98-2.26]``; a noisy point is marked and shows only its interval: its point
    estimate is never the headline."""
    s = point.get("speedup")
    if s is None:
        return "-"
    interval = point.get("speedup_interval")
    bounds = (f"{interval[0]:.2f}-{interval[1]:.2f}"
              if isinstance(interval, list | tuple) and len(interval) == 2 else None)
    if point.get("noisy"):
        return f"noisy ({bounds}x)" if bounds else "noisy"
    return f"{s:.2f}x" + (f" [{bounds}]" if bounds else "")


def _bench(bench: dict[str, Any]) -> tuple[str, str]:
    if bench.get("not_measured"):  # cheap gates first: the target failed before it was timed
        return "not measured", "-"
    results = bench.get("results") or {}
    if not results:
        return "-", "-"
    lat = ", ".join(f"{k} {v.get('median_ms', 0):.1f} ms" for k, v in sorted(results.items()))
    speed = ", ".join(f"{k} {_point_speedup(v)}" for k, v in sorted(results.items())
                      if v.get("speedup") is not None) or "-"
    return lat, speed


def _why(reasons: list[str]) -> str:
    if not reasons:
        return ""
    first = reasons[0] if len(reasons[0]) <= 70 else reasons[0][:67] + "..."
    return first + (f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else "")


@dataclass(frozen=True)
class TargetRow:
    """One target's line of the build's table (and of the history and committed manifests)."""

    label: str  # "recipe/target"
    manifest: dict[str, Any] | None  # None: not finished, or skipped
    status: str  # ok | failed | skipped
    failures: list[str]

    @property
    def recipe(self) -> str:
        return self.label.partition("/")[0]


Row = TargetRow


def rows(targets: list[TargetRow]) -> list[tuple[str, ...]]:
    """One row per target: a manifest (judged) or None (not finished)."""
    out: list[tuple[str, ...]] = []
    for t in targets:
        label, manifest, status, failures = t.label, t.manifest, t.status, t.failures
        if manifest is None:
            out.append((label, status, "-", "-", "-", "-", _why(failures)))
            continue
        size = sum(a.get("size", 0) for a in manifest.get("artifacts", [])) or None
        if size is None and manifest.get("steps"):  # a failed gate ships no engine: show its size
            last = manifest["steps"][-1].get("outputs", {}).get("model", {})
            size = last.get("size")
        lat, speed = _bench(manifest.get("benchmark") or {})
        out.append((label, manifest.get("status", status), _size(size),
                    _parity(manifest.get("checks") or {}), lat, speed, _why(failures)))
    return out


def render(targets: list[TargetRow]) -> str:
    table = [COLUMNS, *rows(targets)]
    if not any(r[-1] for r in table[1:]):
        table = [r[:-1] for r in table]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
