"""`deploy-build diff --format md`: a pull-request comment (GitHub-flavoured Markdown).

A compact table first, one row per target: the verdict and why (`ok → **failed** 🔴: parity: min
cosine 0.9193 < 0.97`, from the new manifest's `failures`), parity, size, latency and speed-up,
each as old → new with its change, and the cause (the changed params, toolchain, inputs and gates
behind the changed task keys). Every change is marked by what it means, not only by its
direction: an arrow for the direction (↑/↓) and a word for the meaning (`🟢 better`, `🔴 worse`;
`faster`/`slower` for latency; higher cosine and speed-up, lower latency and size are better);
`≈ noise` where the change lies inside the measured interval, or where a speed-up's base or head
point was measured noisy. Latency is judged on the basis `compare.latency` names (a paired A/B,
the speed-up vs PyTorch each run paired, the same engine re-measured, raw medians) and the cell
says which. Then, per changed target, the changed task keys with why and every change, folded
in `<details>`.

Every string that comes from a manifest (names, statuses, keys, reasons, change lines, values
that are not numbers) goes through `orchestrator.review.escape` (`md`, `code`, `md_html`): a crafted
manifest cannot put HTML, a link, an image, a heading, a new line or a table pipe into the
comment CI posts. The structure written here (`<details>`, `<summary>`, `<br>`, the table's pipes,
`**`) is the only raw Markdown.
"""

from __future__ import annotations

import re
from typing import Any

from orchestrator.review.escape import code, md, md_html

UP, DOWN, SAME, NOISE = "↑", "↓", "=", "≈"
GOOD, BAD = "🟢", "🔴"
HEADER = ("target", "verdict", "parity (mean cosine)", "size", "latency (median)", "speed-up",
          "cause")
MAX_REASONS = 3  # failures and causes shown in a cell; the rest are counted (all in the details)


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


def meaning(delta: float | None, higher_is_better: bool, words: tuple[str, str] = ("better", "worse")
            ) -> str:
    """``↑ 🟢 better`` / ``↓ 🔴 worse``: the direction and what it means for this metric."""
    if delta is None or delta == 0:
        return SAME
    good = (delta > 0) == higher_is_better
    return f"{_arrow(delta)} {GOOD if good else BAD} {words[0] if good else words[1]}"


def _mb(n: int | None) -> str:
    return "-" if not n else f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.1f} KB"


def _lines(items: list[str]) -> str:
    """At most MAX_REASONS items on their own lines, the rest counted."""
    more = len(items) - MAX_REASONS
    return "<br>".join(items[:MAX_REASONS] + ([f"and {more} more"] if more > 0 else []))


def _reason(failure: Any) -> str:
    return md(str(failure).removeprefix("check "))


def status_cell(c: dict[str, Any]) -> str:
    """The verdict and, where the new manifest failed, why (its `failures`)."""
    a, b = c["status"]["old"], c["status"]["new"]
    if c["change"] in ("added", "removed"):
        cell = f"{md(b or a)} ({c['change']})"
    elif a != b:
        cell = f"{md(a)} → **{md(b)}**"
    else:
        cell = md(b)
    failed, ok = b == "failed" and c["change"] != "removed", b == "ok" and a not in (None, "ok")
    if failed or ok:
        cell += f" {BAD if failed else GOOD}"
    failures = ((c.get("failures") or {}).get("new") or []) if c["change"] != "removed" else []
    if failures:
        cell += ": " + _lines([_reason(f) for f in failures])
    search = c.get("search") or {}
    if search.get("old") != search.get("new") and c["change"] == "changed":
        cell += f"<br>search: {md(search.get('old') or '-')} → **{md(search.get('new') or '-')}**"
    return cell


WHY = re.compile(r"^(?P<what>param|toolchain) changed: (?P<name>\S+) (?P<old>.*) -> (?P<new>.*)$")
GATE = re.compile(r"^(?P<where>checks\.[^.]+|benchmark)\.gate\.(?P<gate>\S+): (?P<change>.*)$")


def _cause(why: str) -> str:
    """``per_channel true → false`` for a param; ``onnxruntime 1.31 → 1.32 (toolchain)``."""
    m = WHY.match(why)
    if m is None:
        return md(why.split(" (", 1)[0] if why.startswith("code or plugin") else why)
    tail = " (toolchain)" if m["what"] == "toolchain" else ""
    return f"{md(m['name'])} {md(m['old'])} → {md(m['new'])}{tail}"


def causes(c: dict[str, Any]) -> list[str]:
    """What changed the task keys (an upstream change alone, `input changed`, only when nothing
    else explains them) and the gates that changed, each once, as escaped text."""
    whys = [(k["step"], w) for k in c.get("keys") or [] for w in k.get("why") or []]
    root = [(s, w) for s, w in whys if not w.startswith("input changed:")] or whys
    out: list[str] = []
    for step, why in root:
        text = f"{code(step)} {_cause(why)}"
        if text not in out:
            out.append(text)
    for d in c.get("details") or []:
        m = GATE.match(d)
        if m:
            where = m["where"].removeprefix("checks.")
            out.append(f"gate {md(where)}.{md(m['gate'])} {md(m['change'].replace(' -> ', ' → '))}")
    return out


def cause_cell(c: dict[str, Any]) -> str:
    if c["change"] in ("added", "removed"):
        return "-"
    return _lines(causes(c)) or "-"


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
    return f"{a:.{places}f} → {b:.{places}f} ({d:+.{places}f}) {meaning(d, True)}"


def size_cell(c: dict[str, Any]) -> str:
    s = c["size"]
    if s["old"] == s["new"]:
        return _mb(s["new"])
    change = f" ({s['pct']:+.1f}%) {meaning(s['pct'], False)}" if s["pct"] is not None else ""
    return f"{_mb(s['old'])} → {_mb(s['new'])}{change}"


BASIS_WORDS = {"paired A/B": "paired A/B", "through the speed-up vs PyTorch": "vs PyTorch",
               "raw medians": "raw medians", "same engine re-measured": "same engine re-measured"}


def _judged(p: dict[str, Any]) -> str:
    """``+26.3% [+15.0%..+38.9%] vs PyTorch``: the judged change, its interval and its basis."""
    change = p.get("change_pct")
    basis = BASIS_WORDS.get(p.get("basis", ""), "")
    if not _num(change):
        return basis
    text = f"{change:+.1f}%"
    interval = p.get("interval_pct")
    if isinstance(interval, list) and len(interval) == 2 and all(_num(x) for x in interval):
        text += f" [{interval[0]:+.1f}%..{interval[1]:+.1f}%]"
    text = f"{text} {basis}".rstrip()
    if not interval and _num(p.get("band_pct")):
        text += f", band ±{p['band_pct']:g}%"
    noisy = p.get("noisy")
    return text + (f", {noisy} measured noisy" if isinstance(noisy, str) else ", noisy" if noisy else "")


def latency_cell(c: dict[str, Any]) -> str:
    """Raw medians for reading; the verdict from the judged (paired) change, labelled with its
    basis: a paired A/B, the speed-up vs PyTorch of each run, the same engine re-measured, or
    the raw medians against their measured spread."""
    parts = []
    for name, p in c["latency"].items():
        key, a, b, verdict = md(name), p["old"], p["new"], p["verdict"]
        noisy = _noisy_ends((c.get("speedup") or {}).get(name) or {})
        if noisy and p.get("basis") == "through the speed-up vs PyTorch" and not p.get("noisy"):
            p = {**p, "noisy": noisy}  # judged on speed-ups measured noisy: say so
        if verdict == "not measured":
            parts.append(f"{key} not measured")
        elif a is None or b is None:
            parts.append(f"{key} {_text(a)} → {_text(b)} ms")
        elif verdict == "same":
            same = " (same engine re-measured)" if p.get("basis") == "same engine re-measured" \
                and a != b else ""
            parts.append(f"{key} {_g(b)} ms{same}")
        elif verdict == "noise":
            parts.append(f"{key} {_g(a)} → {_g(b)} ms ({_judged(p)}) {NOISE} noise")
        else:
            slower = verdict == "slower"
            mark = f"{UP if slower else DOWN} {BAD if slower else GOOD} {verdict}"
            parts.append(f"{key} {_g(a)} → {_g(b)} ms ({_judged(p)}) {mark}")
    return "<br>".join(parts) or "-"


def _x(v: Any, interval: Any) -> str:
    if v is None:
        return "-"
    pair = isinstance(interval, list) and len(interval) == 2
    return f"{_g(v)}x" + (f" [{_g(interval[0])}-{_g(interval[1])}]" if pair else "")


def _noisy_ends(p: dict[str, Any]) -> str:
    """``base``, ``head`` or ``base and head``: the points measured noisy ('' for none)."""
    ends = [w for w, k in (("base", "old_noisy"), ("head", "new_noisy")) if p.get(k)]
    return " and ".join(ends)


def speedup_cell(c: dict[str, Any]) -> str:
    """Each point's speed-up old → new with its interval; a change where the intervals overlap,
    or where the base or the head point was measured noisy (unless it is beyond what load does:
    compare.NOISY_DECIDES), is noise (never "lost 62% of its speed-up"); else higher is
    better."""
    parts = []
    for name, p in c["speedup"].items():
        key, verdict = md(name), p["verdict"]
        if verdict == "same":
            parts.append(f"{key} {_x(p['new'], p['new_interval'])}")
            continue
        text = f"{key} {_x(p['old'], p['old_interval'])} → {_x(p['new'], p['new_interval'])}"
        noisy = _noisy_ends(p)
        if verdict == "noise":
            why = f"{noisy} measured noisy" if noisy else "intervals overlap"
            parts.append(f"{text} {NOISE} noise ({why})")
        elif verdict in ("better", "worse") and _num(p.get("pct")):
            parts.append(f"{text} ({p['pct']:+.1f}%) {meaning(p['pct'], True)}")
        else:
            parts.append(f"{text} ({md(verdict)})")
    return "<br>".join(parts) or "-"


def table(comparisons: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for label, c in comparisons.items():
        cells = (code(label), status_cell(c), parity_cell(c), size_cell(c), latency_cell(c),
                 speedup_cell(c), cause_cell(c))  # each cell escapes what it takes from manifests
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def details(label: str, c: dict[str, Any]) -> list[str]:
    n = len(c["details"])
    lines = ["<details>", f"<summary>{md_html(label)}: {c['change']}, {n} change{'s' if n != 1 else ''}, "
             f"{len(c['keys'])} task key{'s' if len(c['keys']) != 1 else ''} changed</summary>", ""]
    failures = (c.get("failures") or {}).get("new") or []
    if failures:
        lines.extend(["**Why it failed**", ""])
        lines.extend(f"- {md(f)}" for f in failures)
        lines.append("")
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


LEGEND = (f"{UP}/{DOWN} the direction; {GOOD} better / {BAD} worse by what the figure means "
          "(higher parity and speed-up, lower latency and size); "
          f"{NOISE} noise: inside the measured interval, or a point measured noisy (not a "
          "regression). Latency is the engine's median; its change is judged paired: `paired A/B` "
          "(`--rebench`), `vs PyTorch` (each run's speed-up), the same engine re-measured (never "
          "judged), or `raw medians` for manifests without speed-ups.")


def render(comparisons: dict[str, dict[str, Any]], regressions: list[str]) -> str:
    changed = sum(1 for c in comparisons.values() if c["change"] != "same")
    failed = sum(1 for c in comparisons.values()
                 if c["status"]["new"] == "failed" and c["change"] != "removed")
    title = f"### deploy-build diff: {changed} of {len(comparisons)} targets changed"
    lines = [title + (f", {failed} failed {BAD}" if failed else ""), ""]
    lines.extend(table(comparisons))
    lines.append("")
    lines.append(LEGEND)
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
