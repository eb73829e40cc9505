"""`deploy-build diff --format md`: a pull-request comment (GitHub-flavoured Markdown).

A compact table first (one row per target: status, parity, size, latency, speed-up, each with its
change and an arrow); then, per changed target, the changed task keys with why and every change,
folded in `<details>`. Latency inside the measured spread reads `noise ±x%`, not a regression.

Every string that comes from a manifest (names, statuses, keys, reasons, change lines, values
that are not numbers) goes through `orchestrator.escape` (`md`, `code`, `md_html`): a crafted
manifest cannot put HTML, a link, an image, a heading, a new line or a table pipe into the
comment CI posts. The structure written here (`<details>`, `<summary>`, `<br>`, the table's pipes,
`**`) is the only raw Markdown.
"""

from __future__ import annotations

from typing import Any

from orchestrator.escape import code, md, md_html

UP, DOWN, SAME, NOISE = "↑", "↓", "=", "≈"
HEADER = ("target", "status", "parity (mean cosine)", "size", "latency (median)", "speed-up")


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _g(v: Any) -> str:
    """A number as ``{:g}``; anything else a manifest holds there, as escaped text."""
    return f"{v:g}" if _num(v) else md(v)


def _text(v: Any) -> str:
    """A value as written (``-`` for none); anything but a number escaped."""
    return "-" if v is None else str(v) if _num(v) else md(v)


def _arrow(delta: float | None) -> str:
    if delta is None or delta == 0:
        return SAME
    return UP if delta > 0 else DOWN


def _mb(n: int | None) -> str:
    return "-" if not n else f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.1f} KB"


def status_cell(c: dict[str, Any]) -> str:
    a, b = c["status"]["old"], c["status"]["new"]
    if c["change"] in ("added", "removed"):
        return f"{md(b or a)} ({c['change']})"
    cell = f"{md(a)} → **{md(b)}**" if a != b else md(b)
    search = c.get("search") or {}
    if search.get("old") != search.get("new") and c["change"] == "changed":
        cell += f"<br>search: {md(search.get('old') or '-')} → **{md(search.get('new') or '-')}**"
    return cell


def parity_cell(c: dict[str, Any]) -> str:
    p = c["parity"].get("mean_cosine")
    if not p:
        return "-"
    a, b, d = p["old"], p["new"], p["delta"]
    if d is None or not _num(a) or not _num(b):
        return f"{_text(a)} → {_text(b)}"
    if d == 0:
        return f"{b:.4f}"
    places = 4 if abs(d) >= 5e-5 else 6  # a tiny change stays visible
    return f"{a:.{places}f} → {b:.{places}f} ({d:+.{places}f}) {_arrow(d)}"


def size_cell(c: dict[str, Any]) -> str:
    s = c["size"]
    if s["old"] == s["new"]:
        return _mb(s["new"])
    change = f" ({s['pct']:+.1f}%) {_arrow(s['pct'])}" if s["pct"] is not None else ""
    return f"{_mb(s['old'])} → {_mb(s['new'])}{change}"


SHORT_BASIS = {"paired A/B": "paired A/B", "through the speed-up vs PyTorch": "vs PyTorch",
               "raw medians": "raw"}


def _judged(p: dict[str, Any]) -> str:
    """``+26.3% [+15.0%..+38.9%] vs PyTorch``: the judged change and its basis."""
    change = p.get("change_pct")
    if change is None:
        return ""
    text = f"{change:+.1f}%"
    if p.get("interval_pct"):
        text += f" [{p['interval_pct'][0]:+.1f}%..{p['interval_pct'][1]:+.1f}%]"
    elif p.get("band_pct") is not None:
        text += f", band ±{p['band_pct']:g}%"
    return f"{text} {SHORT_BASIS.get(p.get('basis', ''), '')}".rstrip()


def latency_cell(c: dict[str, Any]) -> str:
    """Raw medians for reading; the verdict from the judged (paired) change, labelled with its
    basis: a paired A/B, the speed-up vs PyTorch of each run, or the same engine re-measured."""
    parts = []
    for name, p in c["latency"].items():
        key, a, b = md(name), p["old"], p["new"]
        if p["verdict"] == "not measured":
            parts.append(f"{key} not measured")
        elif a is None or b is None:
            parts.append(f"{key} {_text(a)} → {_text(b)} ms")
        elif p["verdict"] == "same":
            same = " (same engine)" if p.get("basis") == "same engine re-measured" and a != b else ""
            parts.append(f"{key} {_g(b)} ms{same}")
        elif p["verdict"] == "noise":
            parts.append(f"{key} {_g(a)} → {_g(b)} ms (noise: {_judged(p)}) {NOISE}")
        else:
            arrow = UP if p["verdict"] == "slower" else DOWN
            parts.append(f"{key} {_g(a)} → {_g(b)} ms ({_judged(p)}) {arrow}")
    return "<br>".join(parts) or "-"


def _x(v: Any, interval: Any) -> str:
    if v is None:
        return "-"
    pair = isinstance(interval, list) and len(interval) == 2
    return f"{_g(v)}x" + (f" [{_g(interval[0])}-{_g(interval[1])}]" if pair else "")


def speedup_cell(c: dict[str, Any]) -> str:
    parts = []
    for name, p in c["speedup"].items():
        key = md(name)
        if p["verdict"] == "same":
            parts.append(f"{key} {_x(p['new'], p['new_interval'])}")
            continue
        mark = NOISE if p["verdict"] == "noise" else _arrow(p["pct"])
        word = " noise" if p["verdict"] == "noise" else ""
        parts.append(f"{key} {_x(p['old'], p['old_interval'])} → {_x(p['new'], p['new_interval'])}"
                     f"{word} {mark}")
    return "<br>".join(parts) or "-"


def table(comparisons: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for label, c in comparisons.items():
        cells = (code(label), status_cell(c), parity_cell(c), size_cell(c), latency_cell(c),
                 speedup_cell(c))  # each cell escapes what it takes from the manifests
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def details(label: str, c: dict[str, Any]) -> list[str]:
    n = len(c["details"])
    lines = ["<details>", f"<summary>{md_html(label)}: {c['change']}, {n} change{'s' if n != 1 else ''}, "
             f"{len(c['keys'])} task key{'s' if len(c['keys']) != 1 else ''} changed</summary>", ""]
    if c["keys"]:
        lines.append("**Task keys that changed, and why**")
        lines.append("")
        for k in c["keys"]:
            old, new = str(k["old"] or "-")[:12], str(k["new"] or "-")[:12]
            why = "; ".join(md(w) for w in k["why"])
            lines.append(f"- {code(k['step'])} {code(old)} → {code(new)}: {why}")
        lines.append("")
    main = [d for d in c["details"] if not d.startswith("benchmark.")]
    bench = [d for d in c["details"] if d.startswith("benchmark.")]
    if main:
        lines.extend(["**Changes**", ""])
        lines.extend(f"- {md(d)}" for d in main)
        lines.append("")
    if bench:  # every figure the benchmark recorded: folded once more
        lines.extend(["<details>", f"<summary>benchmark figures ({len(bench)} changed)</summary>", ""])
        lines.extend(f"- {md(d)}" for d in bench)
        lines.extend(["", "</details>", ""])
    lines.append("</details>")
    return lines


def render(comparisons: dict[str, dict[str, Any]], regressions: list[str]) -> str:
    changed = sum(1 for c in comparisons.values() if c["change"] != "same")
    lines = [f"### deploy-build diff: {changed} of {len(comparisons)} targets changed", ""]
    lines.extend(table(comparisons))
    lines.append("")
    lines.append(f"{UP}/{DOWN} went up/down; {NOISE} inside the measured spread (noise, not a "
                 "regression); latency is the engine's median.")
    lines.append("")
    if regressions:
        lines.append(f"**{len(regressions)} --fail-on rule(s) broken:**")
        lines.append("")
        lines.extend(f"- :x: {md(r)}" for r in regressions)
        lines.append("")
    for label, c in comparisons.items():
        if c["change"] != "same":
            lines.extend(details(label, c))
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
