"""Choosing the engine for the machine: the winner of a target's ``search:`` (docs/search.md).

The variants were expanded into the one DAG as candidates (recipe.SearchPlan), built, checked
and timed like targets: cheap gates pruned the failing ones, the survivors' benchmarks ran
together in one window against one PyTorch reference, so their speed-ups are comparable. This
module is pure: from each candidate's judged manifest it makes the rows of the search, the Pareto
front (speed-up, mean cosine, size) and the choice, with why:

1. a pin whose ``when`` holds on the machine that measured wins, if it passed the gates;
2. else the best by the objective (the speed-up at ``at`` for latency and throughput, which were
   paired with one reference in one window; the engine's bytes for size);
3. but the previous winner, chosen on the same machine class, is kept unless the challenger is
   clearly better: its speed-up interval lies wholly above the incumbent's (size: smaller by more
   than 1%). A noisy re-measure never flips the committed choice back and forth.
"""

from __future__ import annotations

from typing import Any

from orchestrator.host.conditions import isa_features


def _point(manifest: dict[str, Any], at: str | None) -> tuple[str | None, dict[str, Any] | None]:
    results = ((manifest.get("benchmark") or {}).get("results") or {})
    key = at or (sorted(results)[0] if results else None)
    return key, results.get(key) if key else None


def row(name: str, variant: str, params: dict[str, Any], manifest: dict[str, Any] | None,
        status: str, failures: list[str], at: str | None) -> dict[str, Any]:
    """One candidate's figures and verdict, as the search section records it."""
    out: dict[str, Any] = {"name": name, "variant": variant, "params": params, "status": status}
    if failures:
        out["why"] = failures[0]
    if manifest is None:
        return out
    bench = manifest.get("benchmark") or {}
    if bench.get("not_measured"):
        out["why"] = bench["not_measured"]
    key, point = _point(manifest, at)
    if point is not None:
        out.update(at=key, speedup=point.get("speedup"), interval=point.get("speedup_interval"),
                   median_ms=point.get("median_ms"), noisy=bool(point.get("noisy")))
    parity = (manifest.get("checks") or {}).get("parity") or {}
    if "mean_cosine" in parity:
        out["mean_cosine"] = parity["mean_cosine"]
    size = sum(int(a.get("size") or 0) for a in manifest.get("artifacts") or [])
    if size:
        out["size"] = size
    out["steps"] = [s["step"] for s in manifest.get("steps") or []]
    return out


def front(rows: list[dict[str, Any]]) -> list[str]:
    """Names of the eligible rows no other eligible row beats on every one of speed-up (higher),
    mean cosine (higher) and size (smaller)."""
    ok = [r for r in rows if _eligible(r)]

    def beats(a: dict[str, Any], b: dict[str, Any]) -> bool:
        ge = (a.get("speedup") or 0) >= (b.get("speedup") or 0) and \
            (a.get("mean_cosine") or 0) >= (b.get("mean_cosine") or 0) and \
            (a.get("size") or 0) <= (b.get("size") or 0)
        gt = (a.get("speedup") or 0) > (b.get("speedup") or 0) or \
            (a.get("mean_cosine") or 0) > (b.get("mean_cosine") or 0) or \
            (a.get("size") or 0) < (b.get("size") or 0)
        return ge and gt

    return sorted(r["name"] for r in ok if not any(beats(o, r) for o in ok if o is not r))


def _eligible(r: dict[str, Any]) -> bool:
    return r["status"] == "ok" and (r.get("speedup") is not None or r.get("size") is not None)


def _score(r: dict[str, Any], objective: str) -> float:
    if objective == "size":
        return -float(r.get("size") or float("inf"))
    return float(r.get("speedup") or 0.0)


def clearly_better(challenger: dict[str, Any], incumbent: dict[str, Any], objective: str) -> bool:
    """The challenger wins over the incumbent only beyond the noise: its speed-up interval lies
    wholly above the incumbent's (size: more than 1% smaller)."""
    if objective == "size":
        return float(challenger.get("size") or 0) < 0.99 * float(incumbent.get("size") or 0)
    lo = (challenger.get("interval") or [challenger.get("speedup") or 0])[0]
    hi = (incumbent.get("interval") or [0, incumbent.get("speedup") or 0])[-1]
    return float(lo) > float(hi)


def _pinned(spec: Any, rows: list[dict[str, Any]], features: list[str]) -> dict[str, Any] | None:
    for pin in spec.pin:
        if pin.when is not None and pin.when.unmet(features):
            continue
        mine = [r for r in rows if pin.variant in (r["name"], r["variant"]) and _eligible(r)]
        if mine:
            return max(mine, key=lambda r: (_score(r, spec.objective), r["name"]))
    return None


def choose(spec: Any, rows: list[dict[str, Any]], machine: dict[str, Any],
           previous: dict[str, Any] | None) -> dict[str, Any]:
    """The search section of the winner's manifest: rows, front, winner (None: none passed)
    and why."""
    at = spec.at or next((r["at"] for r in rows if r.get("at")), None)
    objective = spec.objective + (f" at {at}" if at and spec.objective != "size" else "")
    section: dict[str, Any] = {
        "objective": objective, "strategy": spec.strategy, "machine": machine,
        "variants": sorted(rows, key=lambda r: r["name"]), "front": front(rows)}
    eligible = [r for r in rows if _eligible(r)]
    if not eligible:
        section.update(winner=None, why="no variant passed its gates and was measured")
        return section
    best = max(eligible, key=lambda r: (_score(r, spec.objective), r["name"]))
    pinned = _pinned(spec, rows, machine.get("cpu_features") or [])
    if pinned is not None:
        section.update(winner=pinned["name"], why=f"pinned for this machine class ({pinned['variant']})")
        return section
    old = (previous or {}).get("winner")
    same_class = (previous or {}).get("machine") == machine
    incumbent = next((r for r in eligible if r["name"] == old), None) if same_class else None
    if incumbent is not None and best is not incumbent \
            and not clearly_better(best, incumbent, spec.objective):
        section.update(winner=incumbent["name"], why=(
            f"kept the previous winner: {best['name']} {_fig(best, spec.objective)} is not "
            f"clearly better than {_fig(incumbent, spec.objective)} (the intervals overlap)"))
        return section
    others = sorted((r for r in eligible if r is not best), key=lambda r: -_score(r, spec.objective))
    why = f"best {objective}: {best['name']} {_fig(best, spec.objective)}"
    if others:
        why += "; next: " + ", ".join(f"{r['name']} {_fig(r, spec.objective)}" for r in others[:3])
    if incumbent is not None and best is not incumbent:
        why += f"; clearly better than the previous winner {incumbent['name']}"
    section.update(winner=best["name"], why=why)
    return section


def _fig(r: dict[str, Any], objective: str) -> str:
    if objective == "size":
        return f"{(r.get('size') or 0) / 2**20:.1f} MB"
    interval = r.get("interval")
    text = f"{r.get('speedup')}x"
    return text + (f" [{interval[0]}-{interval[1]}]" if interval else "")


def machine_class(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The machine class the figures were measured on: its CPU features and core count (from
    the benchmark records; the same machine measured every candidate of one build)."""
    for m in manifests:
        bench = m.get("benchmark") or {}
        if isinstance(bench.get("cpu_features"), list):
            return {"cpu_features": list(bench["cpu_features"]), "cpu_count": bench.get("cpu_count")}
    from orchestrator.host.machine import detect

    d = detect()
    return {"cpu_features": isa_features(d.cpu_flags), "cpu_count": d.cpu_count}
