"""The comparison of two manifests of one target, as values (pure: no files, no printing).

`compare(old, new)` gives what a reviewer reads first (status, parity, size, per-point latency
and speed-up, each with its change) and why task keys changed. A latency change inside the
measured spread of the two measurements is `noise`, not a regression: the band is the larger of
the two points' spreads (consecutive window medians, the relative half-width of the paired
speed-up's 95% interval, and, for a point marked noisy or unstable, p90 over the median).
A speed-up whose two intervals overlap is `noise` too.
"""

from __future__ import annotations

from typing import Any, TypeGuard

PARITY_FIELDS = ("mean_cosine", "min_cosine", "top1_agreement", "max_abs_diff")


def size_of(m: dict[str, Any]) -> int | None:
    """Total artifact bytes; a failed gate ships no engine, so then its last step's output."""
    size = sum(int(a.get("size") or 0) for a in m.get("artifacts") or [])
    if not size and m.get("steps"):
        out = (m["steps"][-1].get("outputs") or {}).get("model") or {}
        size = int(out.get("size") or 0)
    return size or None


def pct(a: Any, b: Any) -> float | None:
    if not _num(a) or not _num(b) or not a:
        return None
    return round((float(b) - float(a)) / abs(float(a)) * 100, 2)


def _num(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool)


def band(point: dict[str, Any]) -> float:
    """The relative spread (a fraction) this point was measured with."""
    values = [float(point.get("spread") or 0.0)]
    interval, speedup = point.get("speedup_interval"), point.get("speedup")
    if isinstance(interval, list) and len(interval) == 2 and speedup:
        values.append((float(interval[1]) - float(interval[0])) / (2 * float(speedup)))
    median, p90 = point.get("median_ms"), point.get("p90_ms")
    if (point.get("noisy") or not point.get("stable", True)) and _num(median) and _num(p90) \
            and median:
        values.append((p90 - median) / median)
    return round(max(values), 4)


def _points(m: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    results = ((m or {}).get("benchmark") or {}).get("results") or {}
    return {k: v for k, v in results.items() if isinstance(v, dict)}


def latency(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    po, pn = _points(old), _points(new)
    for key in sorted(set(po) | set(pn)):
        a, b = po.get(key, {}), pn.get(key, {})
        ma, mb = a.get("median_ms"), b.get("median_ms")
        change = pct(ma, mb)
        width = max(band(a), band(b)) if a and b else None
        if change is None:
            verdict = "same" if ma == mb else ("added" if ma is None else "removed")
        elif width is not None and abs(change) <= width * 100:
            verdict = "noise"
        else:
            verdict = "slower" if change > 0 else ("faster" if change < 0 else "same")
        out[key] = {"old": ma, "new": mb, "pct": change,
                    "band_pct": None if width is None else round(width * 100, 2), "verdict": verdict}
    return out


def _overlap(a: Any, b: Any) -> bool:
    return (isinstance(a, list) and isinstance(b, list) and len(a) == len(b) == 2
            and a[0] <= b[1] and b[0] <= a[1])


def speedup(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    po, pn = _points(old), _points(new)
    for key in sorted(set(po) | set(pn)):
        a, b = po.get(key, {}), pn.get(key, {})
        sa, sb = a.get("speedup"), b.get("speedup")
        ia, ib = a.get("speedup_interval"), b.get("speedup_interval")
        if not _num(sa) or not _num(sb):
            verdict = "same" if sa == sb else ("added" if sa is None else "removed")
        elif sa == sb:
            verdict = "same"
        elif _overlap(ia, ib):
            verdict = "noise"
        else:
            verdict = "better" if sb > sa else "worse"
        out[key] = {"old": sa, "new": sb, "old_interval": ia, "new_interval": ib,
                    "pct": pct(sa, sb), "verdict": verdict}
    return out


def parity(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any]:
    pa = ((old or {}).get("checks") or {}).get("parity") or {}
    pb = ((new or {}).get("checks") or {}).get("parity") or {}
    out: dict[str, Any] = {}
    for f in PARITY_FIELDS:
        if f in pa or f in pb:
            a, b = pa.get(f), pb.get(f)
            delta = round(b - a, 6) if _num(a) and _num(b) else None
            out[f] = {"old": a, "new": b, "delta": delta}
    if pa.get("passed") is not None or pb.get("passed") is not None:
        out["passed"] = {"old": pa.get("passed"), "new": pb.get("passed")}
    return out


def _steps(m: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {f"{i + 1}:{s['step']}": s for i, s in enumerate((m or {}).get("steps") or [])}


def flatten(value: Any, prefix: str = "", lists: bool = False) -> dict[str, Any]:
    """Dotted path -> leaf value of nested dicts (and, with ``lists``, of lists of dicts, by
    index), in sorted order."""
    items: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        items = [(str(k), value[k]) for k in sorted(value)]
    elif lists and isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else k, lists))
    return out


def key_reasons(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Why a step's key changed, from what the manifests record (as `--dry-run` words it)."""
    why: list[str] = []
    if a.get("version") != b.get("version"):
        why.append(f"step version changed: {a.get('version')} -> {b.get('version')}")
    for field, word in (("params", "param"), ("toolchain", "toolchain")):
        fa, fb = flatten(a.get(field) or {}), flatten(b.get(field) or {})
        why.extend(f"{word} changed: {k} {_word(fa.get(k))} -> {_word(fb.get(k))}"
                   for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k))
    ia, ib = a.get("inputs") or {}, b.get("inputs") or {}
    why.extend(f"input changed: {k}" for k in sorted(set(ia) | set(ib))
               if (ia.get(k) or {}).get("digest") != (ib.get(k) or {}).get("digest"))
    return why or ["code or plugin changed (what the key holds beyond the manifest)"]


def _word(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "(none)" if v is None else str(v)


def keys(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[dict[str, Any]]:
    so, sn = _steps(old), _steps(new)
    out = []
    for name in [*sn, *(n for n in so if n not in sn)]:
        a, b = so.get(name), sn.get(name)
        if a is None or b is None:
            out.append({"step": name, "old": a and a.get("key"), "new": b and b.get("key"),
                        "why": ["step added" if a is None else "step removed"]})
        elif a.get("key") != b.get("key"):
            out.append({"step": name, "old": a.get("key"), "new": b.get("key"),
                        "why": key_reasons(a, b)})
    return out


def compare(old: dict[str, Any] | None, new: dict[str, Any] | None,
            details: list[str]) -> dict[str, Any]:
    """The comparison of one target; ``details`` are the diff's full change lines."""
    if old is None or new is None:
        change = "added" if old is None else "removed"
    else:
        change = "changed" if details else "same"
    so, sn = (size_of(old) if old else None), (size_of(new) if new else None)
    return {
        "change": change,
        "status": {"old": (old or {}).get("status"), "new": (new or {}).get("status")},
        "parity": parity(old, new),
        "size": {"old": so, "new": sn, "pct": pct(so, sn)},
        "latency": latency(old, new),
        "speedup": speedup(old, new),
        "keys": keys(old, new),
        "details": details,
    }
