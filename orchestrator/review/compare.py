"""The comparison of two manifests of one target, as values (pure: no files, no printing).

`compare(old, new)` gives what a reviewer reads first (status, parity, size, per-point latency
and speed-up, each with its change) and why task keys changed.

Absolute latencies from two runs on a shared machine are not comparable (the PyTorch reference
itself moved +40% between two runs of an unchanged engine), so a latency change is judged on a
paired figure (`latency`): the head and base engines timed alternately in one window (`diff
--rebench`); else, when the benchmark's key is unchanged, not at all (the same engine
re-measured never regresses); else through the speed-up against PyTorch that each run measured
paired, labelled so. Only a change whose interval lies wholly on one side is `slower` or
`faster`; the rest is `noise`. Manifests without speed-ups (older ones) fall back to the raw
medians against the larger of the two points' measured spreads (`band`). A speed-up whose two
intervals overlap is `noise` too; a benchmark not run because its target failed an untimed gate
reads `not measured`, never `removed`.
"""

from __future__ import annotations

from typing import Any, TypeGuard

# A point measured on a noisy machine decides a change only past this factor: load has moved a
# paired speed-up 2x (5.75x busy against 2.9x quiet), never an engine's own speed 3x
NOISY_DECIDES = 3.0
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


def _bench(m: dict[str, Any] | None) -> dict[str, Any]:
    bench = (m or {}).get("benchmark")
    return bench if isinstance(bench, dict) else {}


BASIS_PAIRED = "paired A/B"  # head and base timed alternately in one window (diff --rebench)
BASIS_SAME = "same engine re-measured"  # the benchmark's key did not change: nothing to judge
BASIS_SPEEDUP = "through the speed-up vs PyTorch"  # each run paired its engine with PyTorch
BASIS_RAW = "raw medians"  # no paired figure at all (old manifests): judged on the band


def latency(old: dict[str, Any] | None, new: dict[str, Any] | None,
            paired: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per grid point: the raw medians (what people read) and the judged change (what a
    ``latency+X%`` rule reads), on the best basis there is: a paired A/B of the two engines
    (``paired``: point -> {ratio, interval, noisy}); else nothing to judge when the benchmark's
    key is unchanged (the same engine, re-measured); else the change of the engine's time
    relative to PyTorch, which each run measured paired (absolute latencies from two runs on a
    shared machine are not comparable); else the raw medians against their measured spread."""
    out: dict[str, Any] = {}
    bo, bn = _bench(old), _bench(new)
    po, pn = _points(old), _points(new)
    same_engine = bool(bo.get("key")) and bo.get("key") == bn.get("key")
    for key in sorted(set(po) | set(pn)):
        a, b = po.get(key, {}), pn.get(key, {})
        ma, mb = a.get("median_ms"), b.get("median_ms")
        entry: dict[str, Any] = {"old": ma, "new": mb, "pct": pct(ma, mb)}
        entry.update(_judged(a, b, (paired or {}).get(key), same_engine))
        out[key] = entry
    if bn.get("not_measured"):
        for key in sorted(po):
            out[key] = {"old": po[key].get("median_ms"), "new": None, "pct": None,
                        "verdict": "not measured", "why": bn["not_measured"]}
    return out


def _judged(a: dict[str, Any], b: dict[str, Any], paired: dict[str, Any] | None,
            same_engine: bool) -> dict[str, Any]:
    """The verdict (same | added | removed | noise | slower | faster), its basis, the judged
    change in percent and its interval."""
    ma, mb = a.get("median_ms"), b.get("median_ms")
    if paired is not None:
        lo, hi = paired["interval"]
        return {"basis": BASIS_PAIRED, **_ratio_verdict(paired["ratio"], lo, hi),
                "noisy": bool(paired.get("noisy"))}
    if not _num(ma) or not _num(mb):
        return {"verdict": "same" if ma == mb else ("added" if ma is None else "removed")}
    if same_engine:
        return {"basis": BASIS_SAME, "verdict": "same", "change_pct": 0.0}
    sa, sb = a.get("speedup"), b.get("speedup")
    ia, ib = a.get("speedup_interval"), b.get("speedup_interval")
    if _num(sa) and _num(sb) and sa > 0 and sb > 0:
        ia = ia if isinstance(ia, list) and len(ia) == 2 and ia[0] > 0 else [sa, sa]
        ib = ib if isinstance(ib, list) and len(ib) == 2 and ib[0] > 0 else [sb, sb]
        # engine time relative to PyTorch: old/new speed-up; its interval from the two intervals
        judged = _ratio_verdict(sa / sb, ia[0] / ib[1], ia[1] / ib[0])
        if (a.get("noisy") or b.get("noisy")) and 1 / NOISY_DECIDES < sa / sb < NOISY_DECIDES:
            judged.update(verdict="noise", noisy=True)  # a noisy end decides no small change
        return {"basis": BASIS_SPEEDUP, **judged}
    change = pct(ma, mb)
    width = max(band(a), band(b)) if a and b else None
    if change is None or change == 0:
        verdict = "same"
    elif width is not None and abs(change) <= width * 100:
        verdict = "noise"
    else:
        verdict = "slower" if change > 0 else "faster"
    return {"basis": BASIS_RAW, "verdict": verdict, "change_pct": change,
            "band_pct": None if width is None else round(width * 100, 2)}


def _ratio_verdict(ratio: float, lo: float, hi: float) -> dict[str, Any]:
    """A new/old time ratio with its interval: slower or faster only when the interval lies
    wholly on one side of 1 (no change), else noise."""
    verdict = "slower" if lo > 1.0 else ("faster" if hi < 1.0 else "noise")
    return {"verdict": verdict, "change_pct": round((ratio - 1.0) * 100, 2),
            "interval_pct": [round((lo - 1.0) * 100, 2), round((hi - 1.0) * 100, 2)]}


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
        elif _overlap(ia, ib) or ((a.get("noisy") or b.get("noisy"))
                                  and 1 / NOISY_DECIDES < sb / sa < NOISY_DECIDES):
            verdict = "noise"  # a noisy end is not read as a lost (or won) speed-up
        else:
            verdict = "better" if sb > sa else "worse"
        out[key] = {"old": sa, "new": sb, "old_interval": ia, "new_interval": ib,
                    "pct": pct(sa, sb), "verdict": verdict,
                    # whether each point was measured noisy (results.<point>.noisy): a change
                    # with a noisy end reads as noise in the PR comment
                    "old_noisy": bool(a.get("noisy")), "new_noisy": bool(b.get("noisy"))}
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
    """Why a step's key changed, from what the manifests record, in the very words `--dry-run`
    and `explain` use (keys.diff_documents over the parts of the key a manifest records)."""
    from orchestrator.plan.keys import diff_documents

    def doc(step: dict[str, Any]) -> dict[str, Any]:
        inputs = step.get("inputs") or {}
        return {"version": step.get("version"), "plugin": step.get("plugin") or {},
                "params": step.get("params") or {}, "toolchain": step.get("toolchain") or {},
                "inputs": {k: (v or {}).get("digest") for k, v in inputs.items()}}

    why = diff_documents(doc(a), doc(b))
    return why if why != ["key changed"] else [
        "code or plugin changed (what the key holds beyond the manifest)"]


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


def failures_of(m: dict[str, Any] | None) -> list[Any]:
    """The manifest's `failures` as a list (empty when it passed)."""
    f = (m or {}).get("failures") or []
    return list(f) if isinstance(f, list) else [f]


def compare(old: dict[str, Any] | None, new: dict[str, Any] | None,
            details: list[str], paired: dict[str, Any] | None = None) -> dict[str, Any]:
    """The comparison of one target; ``details`` are the diff's full change lines; ``paired``
    the target's paired A/B figures (diff --rebench), if any."""
    if old is None or new is None:
        change = "added" if old is None else "removed"
    else:
        change = "changed" if details else "same"
    so, sn = (size_of(old) if old else None), (size_of(new) if new else None)
    return {
        "change": change,
        "status": {"old": (old or {}).get("status"), "new": (new or {}).get("status")},
        # why each side failed (the manifest's `failures`; empty when ok)
        "failures": {"old": failures_of(old), "new": failures_of(new)},
        "parity": parity(old, new),
        "size": {"old": so, "new": sn, "pct": pct(so, sn)},
        "latency": latency(old, new, paired),
        "speedup": speedup(old, new),
        "keys": keys(old, new),
        "search": {"old": ((old or {}).get("search") or {}).get("winner"),
                   "new": ((new or {}).get("search") or {}).get("winner"),
                   "why": ((new or {}).get("search") or {}).get("why")},
        "details": details,
    }
