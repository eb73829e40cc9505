"""The nightly report: one self-contained HTML page from the build history (`history.jsonl`).

The page needs no network: Vega-Lite charts (built with altair) are drawn by the vega-embed
bundle that vl-convert ships, inlined once in the page. altair and vl-convert (the `report`
extra) are imported only when a report is written; without them writing one is a user error that
says how to install them.

What it holds:

- a table of recipes x targets: status, why a target failed (its manifest's `failures`), parity,
  size, latency and speed-up per point (with the speed-up's measured interval; a point measured
  noisy says so), and the change since the previous run, judged as `diff` judges it
  (`compare.latency`: through the speed-up vs PyTorch with its interval, the same engine
  re-measured never judged) where both runs recorded intervals;
- per recipe, accuracy (mean cosine) against latency for its targets, with each target's parity
  gate as a dashed line;
- the trend of latency, speed-up (its measured interval as a band, each target's `min_speedup` as
  a dashed line) and parity (each target's `mean_cosine` gate as a dashed line) over the recorded
  runs, on a time axis (UTC).

Points measured noisy are drawn hollow, quiet ones filled. No chart draws text marks of its own
(names are in the legends and tooltips; Vega lays out axes and legends and hides overlapping axis
labels), so no two labels can land on each other.

Only the lines of one branch are drawn (each history line records its branch and revision):
`--branch NAME`, `--branch all` for every line; by default `main`, else `master`, else every
line. Lines recorded before branches were (no `branch` field) are always kept.

The history is data (target names, statuses, step and point names come from manifests): every
text and attribute goes through `escape.html_text` and every chart's spec through
`escape.script_json`, so no string can end, comment out or open a `<script>`; values that are not
numbers where numbers belong are shown as text, not a crash.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.errors import FatalError
from orchestrator.hashing import atomic_write
from orchestrator.review.escape import html_text, script_json

REPORT_EXTRA = "install the report extra: pip install 'deploy-build[report]'"
DEFAULT_BRANCHES = ("main", "master")
ALL = "all"

STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:left;font-size:.9em;vertical-align:top}th{background:#f3f3f3}td.ok{color:#1a7f37}
td.failed,td.why{color:#c00}td.noisy{color:#8a6d00}.chart{margin:.5em 0 1.5em}
p.note{color:#555;font-size:.85em;margin:.2em 0}"""

Rows = dict[str, tuple[dict[str, Any], dict[str, Any] | None, int]]


class MissingReportExtra(FatalError):
    """altair or vl-convert is not installed: a user error (exit 1) that says what to install."""


def require_report_extra() -> None:
    try:
        import altair  # noqa: F401
        import vl_convert  # noqa: F401
    except ImportError as e:
        raise MissingReportExtra(f"{REPORT_EXTRA} ({e})") from None


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _run_number(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError, OverflowError):
        return 0


def _targets(entry: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The run's target records, sorted; a record that is not an object is left out."""
    return sorted((label, rec) for label, rec in entry["targets"].items() if isinstance(rec, dict))


def _figures(rec: dict[str, Any] | None, field: str) -> dict[str, Any]:
    value = (rec or {}).get(field)
    return value if isinstance(value, dict) else {}


def _noisy_points(rec: dict[str, Any]) -> set[str]:
    points = rec.get("noisy_points")
    return {str(p) for p in points} if isinstance(points, list) else set()


def _interval(rec: dict[str, Any], point: str) -> list[float] | None:
    iv = _figures(rec, "speedup_interval").get(point)
    return [float(iv[0]), float(iv[1])] if isinstance(iv, list) and len(iv) == 2 \
        and all(_num(x) for x in iv) else None


def _time(v: Any) -> str | None:
    """An ISO time as ``YYYY-MM-DDTHH:MM:SSZ`` (UTC), or None when it is not one."""
    try:
        t = datetime.fromisoformat(str(v))
    except ValueError:
        return None
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# which lines: one branch

def branches(runs: list[dict[str, Any]]) -> dict[str, int]:
    """How many lines each branch recorded (lines without a branch are left out)."""
    out: dict[str, int] = {}
    for entry in runs:
        if isinstance(entry.get("branch"), str):
            out[entry["branch"]] = out.get(entry["branch"], 0) + 1
    return dict(sorted(out.items()))


def select(runs: list[dict[str, Any]], branch: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """The lines to draw and the branch they are of (None: every line). ``branch`` None picks
    the first of DEFAULT_BRANCHES that recorded a line, else every line; ``all`` every line. A
    line recorded without a branch is always kept. A branch that recorded nothing is an error."""
    counts = branches(runs)
    if branch == ALL or (branch is None and not counts):
        return runs, None
    if branch is None:
        branch = next((b for b in DEFAULT_BRANCHES if b in counts), None)
        if branch is None:
            return runs, None
    if branch not in counts:
        known = ", ".join(counts) or "none (the lines record no branch)"
        raise FatalError(f"no recorded run of branch {branch!r} in the history; its branches: "
                         f"{known}; --branch all draws every line")
    return [e for e in runs if e.get("branch") in (branch, None)], branch


# the table

def latest(runs: list[dict[str, Any]]) -> Rows:
    """Per target: its last record, the one before it (or None) and the run it came from."""
    out: Rows = {}
    for entry in runs:
        for label, rec in _targets(entry):
            before = out[label][0] if label in out else None
            out[label] = (rec, before, _run_number(entry.get("run", 0)))
    return dict(sorted(out.items()))


def _as_manifest(rec: dict[str, Any]) -> dict[str, Any]:
    """The benchmark section `compare.latency` reads, from a history record."""
    noisy = _noisy_points(rec)
    results = {p: {"median_ms": ms, "speedup": _figures(rec, "speedup").get(p),
                   "speedup_interval": _interval(rec, p), "noisy": p in noisy}
               for p, ms in _figures(rec, "latency_ms").items()}
    return {"benchmark": {"key": rec.get("benchmark_key"), "results": results}}


def _latency_change(point: str, rec: dict[str, Any], before: dict[str, Any]) -> str | None:
    """``b1_s128 +12.0% [+3.0%..+20.0%] vs PyTorch: slower``: judged as `diff` judges it where
    both runs recorded the speed-up's interval (or the benchmark's key), else the raw change."""
    from orchestrator.review.compare import BASIS_SAME, BASIS_SPEEDUP, latency

    old, new = _figures(before, "latency_ms").get(point), _figures(rec, "latency_ms").get(point)
    if not (_num(old) and _num(new) and old and new) or old == new:
        return None
    raw = f"{point} {(new - old) / old * 100:+.1f}%"
    ends = [w for w, r in (("the previous run", before), ("this run", rec)) if point in _noisy_points(r)]
    noisy = f", {' and '.join(ends)} measured noisy" if ends else ""
    judged = latency(_as_manifest(before), _as_manifest(rec)).get(point) or {}
    if judged.get("basis") == BASIS_SAME:
        return f"{raw} (same engine re-measured{noisy})"
    if judged.get("basis") != BASIS_SPEEDUP or not (_interval(before, point) and _interval(rec, point)):
        return raw + (f" ({noisy[2:]})" if noisy else "")
    lo, hi = judged["interval_pct"]
    return (f"{point} {judged['change_pct']:+.1f}% [{lo:+.1f}%..{hi:+.1f}%] vs PyTorch: "
            f"{judged['verdict']}" + (f" ({noisy[2:]})" if noisy else ""))


def _change(rec: dict[str, Any], before: dict[str, Any] | None) -> str:
    if before is None:
        return "first run"
    parts = []
    if rec.get("status") != before.get("status"):
        parts.append(f"status {before.get('status')} → {rec.get('status')}")
    a, b = _figures(before, "parity").get("mean_cosine"), _figures(rec, "parity").get("mean_cosine")
    if isinstance(a, float) and isinstance(b, float) and a != b:
        parts.append(f"parity {b - a:+.4f}")
    sa, sb = before.get("size"), rec.get("size")
    if _num(sa) and _num(sb) and sa and sb and sa != sb:
        parts.append(f"size {(sb - sa) / sa * 100:+.1f}%")
    for point in _figures(rec, "latency_ms"):
        change = _latency_change(point, rec, before)
        if change:
            parts.append(change)
    changed_keys = [k for k, v in _figures(rec, "keys").items()
                    if _figures(before, "keys").get(k) != v]
    if changed_keys:
        parts.append("rebuilt " + ", ".join(changed_keys))
    return "; ".join(parts) or "no change"


def _mb(n: Any) -> str:
    return f"{n / 2**20:.1f} MB" if isinstance(n, int) and not isinstance(n, bool) and n else "-"


def _g(v: Any) -> str:
    return f"{v:g}" if _num(v) else str(v)


def _parity(p: dict[str, Any]) -> str:
    mean, low = p.get("mean_cosine"), p.get("min_cosine", 0)
    if mean is None:
        return "-"
    if _num(mean) and _num(low):
        return f"{mean:.4f}/{low:.4f}"
    return f"{mean}/{low}"


def _points(rec: dict[str, Any]) -> tuple[str, str]:
    """The latency and the speed-up cells: per point, with the speed-up's interval; a point
    measured noisy says so."""
    noisy = _noisy_points(rec)
    lat, speed = [], []
    for k, v in _figures(rec, "latency_ms").items():
        if v:
            lat.append(f"{k} {_g(v)} ms" + (" (noisy)" if k in noisy else ""))
    for k, v in _figures(rec, "speedup").items():
        if v:
            iv = _interval(rec, k)
            interval = f" [{iv[0]:g}-{iv[1]:g}]" if iv else ""
            speed.append(f"{k} {_g(v)}x{interval}" + (" (noisy)" if k in noisy else ""))
    speed_cell = ", ".join(speed) or "-"
    if rec.get("noisy") and not noisy and speed:  # an older line: only the target's flag
        speed_cell += " (noisy)"
    return ", ".join(lat) or "-", speed_cell


def _why(rec: dict[str, Any]) -> str:
    failures = rec.get("failures")
    items = failures if isinstance(failures, list) else [failures] if failures else []
    items = [str(f).removeprefix("check ") for f in items]
    if rec.get("not_measured"):
        items.append(f"not measured: {rec['not_measured']}")
    return "; ".join(items) or "-"


HEAD = ("recipe", "target", "status", "why it failed", "parity (mean/min cosine)", "size",
        "latency (median)", "speed-up vs PyTorch [interval]", "change since the previous run", "run")


def table_html(rows: Rows) -> str:
    out = ["<table id='targets'><thead><tr>" + "".join(f"<th>{html_text(h)}</th>" for h in HEAD)
           + "</tr></thead><tbody>"]
    for label, (rec, before, run) in rows.items():
        recipe, _, target = label.partition("/")
        lat, speed = _points(rec)
        status = str(rec.get("status", "?"))
        noisy = "noisy" if _noisy_points(rec) or rec.get("noisy") else ""
        cells = ((recipe, ""), (target, ""), (status, status), (_why(rec), "why"),
                 (_parity(_figures(rec, "parity")), ""), (_mb(rec.get("size")), ""),
                 (lat, noisy), (speed, noisy), (_change(rec, before), ""), (str(run), ""))
        out.append("<tr>" + "".join(
            f"<td class='{html_text(cls)}'>{html_text(c)}</td>" if cls else f"<td>{html_text(c)}</td>"
            for c, cls in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


# the charts' data

def tradeoff_data(rows: Rows, recipe: str) -> list[dict[str, Any]]:
    data = []
    for label, (rec, _, _) in rows.items():
        if label.partition("/")[0] != recipe:
            continue
        cos = _figures(rec, "parity").get("mean_cosine")
        noisy = _noisy_points(rec)
        for point, ms in _figures(rec, "latency_ms").items():
            if ms and cos is not None:
                data.append({"target": label.partition("/")[2], "point": point, "latency_ms": ms,
                             "mean_cosine": cos, "speedup": _figures(rec, "speedup").get(point),
                             "noisy": point in noisy})
    return data


def gate_data(rows: Rows, recipe: str | None = None) -> list[dict[str, Any]]:
    """Each target's gates as its last record holds them (the lines drawn on the charts)."""
    data = []
    for label, (rec, _, _) in rows.items():
        if recipe is not None and label.partition("/")[0] != recipe:
            continue
        gates = {k: v for k, v in _figures(rec, "gates").items()
                 if k in ("min_speedup", "mean_cosine") and _num(v)}
        if gates:
            data.append({"target": label if recipe is None else label.partition("/")[2], **gates})
    return data


def trend_data(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one row per run, target and point: latency, speed-up and its interval, noisy; one row
    per run and target: parity)."""
    points, parity = [], []
    for entry in runs:
        when = {"run": entry.get("run"), "time": _time(entry.get("time")),
                "revision": str(entry.get("revision") or "")[:12]}
        for label, rec in _targets(entry):
            noisy = _noisy_points(rec)
            for point, ms in _figures(rec, "latency_ms").items():
                iv = _interval(rec, point)
                points.append({**when, "target": label, "point": point, "latency_ms": ms,
                               "speedup": _figures(rec, "speedup").get(point),
                               "speedup_lo": iv[0] if iv else None,
                               "speedup_hi": iv[1] if iv else None, "noisy": point in noisy})
            cos = _figures(rec, "parity").get("mean_cosine")
            if cos is not None:
                parity.append({**when, "target": label, "mean_cosine": cos})
    return points, parity


# the charts

NOISY_NOTE = "hollow: measured noisy"
AXIS = {"labelOverlap": True, "labelFlush": True}  # Vega hides an axis label that would overlap


DAY_MS = 86_400_000


def _time_x() -> Any:
    """Dates (UTC) on the x axis, a tick a day at most (the time of day is in the tooltips)."""
    import altair as alt

    return alt.X("time:T", title="build date (UTC)", scale=alt.Scale(type="utc"),
                 axis=alt.Axis(format="%b %d", tickMinStep=DAY_MS, labelAngle=0))


def _points_layers(base: Any, tooltip: list[str]) -> list[Any]:
    """The same points twice: quiet ones filled, noisy ones hollow."""
    quiet = base.transform_filter("!datum.noisy").mark_point(filled=True, size=60, opacity=0.9)
    noisy = base.transform_filter("datum.noisy").mark_point(filled=False, size=80, strokeWidth=2)
    return [quiet.encode(tooltip=tooltip), noisy.encode(tooltip=tooltip)]


def _gate_rule(gates: list[dict[str, Any]], field: str, title: str) -> list[Any]:
    """Each target's threshold as a dashed line in the target's colour (none without one)."""
    import altair as alt

    values = [g for g in gates if field in g]
    if not values:
        return []
    return [alt.Chart({"values": values}).mark_rule(strokeDash=[6, 4], strokeWidth=1.5).encode(
        y=alt.Y(f"{field}:Q", title=title), color=alt.Color("target:N", title="target"),
        tooltip=["target:N", alt.Tooltip(f"{field}:Q", title=f"gate {field}")])]


def _titled(chart: Any, title: str, note: str) -> dict[str, Any]:
    """The chart's spec; ``note`` (how to read it) is its description, shown above it."""
    spec: dict[str, Any] = chart.properties(width=560, height=280, title=title, description=note
                                            ).configure_axis(**AXIS).configure_legend(
                                                labelLimit=260).to_dict()
    return spec


def tradeoff_chart(rows: Rows, recipe: str) -> dict[str, Any] | None:
    import altair as alt

    data = tradeoff_data(rows, recipe)
    if not data:
        return None
    base = alt.Chart({"values": data}).encode(
        x=alt.X("latency_ms:Q", title="median latency (ms)", scale=alt.Scale(zero=False, padding=12)),
        y=alt.Y("mean_cosine:Q", title="parity (mean cosine)", scale=alt.Scale(zero=False, padding=12)),
        color=alt.Color("target:N", title="target"),
        shape=alt.Shape("point:N", title="batch x sequence"))
    tooltip = ["target:N", "point:N", "latency_ms:Q", "mean_cosine:Q", "speedup:Q", "noisy:N"]
    layers = [*_gate_rule(gate_data(rows, recipe), "mean_cosine", "parity (mean cosine)"),
              *_points_layers(base, tooltip)]
    return _titled(alt.layer(*layers), f"{recipe}: accuracy against latency",
                   f"{NOISY_NOTE}; dashed: each target's parity gate (mean cosine)")


def trend_charts(runs: list[dict[str, Any]], rows: Rows) -> list[tuple[str, dict[str, Any]]]:
    """Latency, speed-up and parity over the recorded runs, on a time axis."""
    import altair as alt

    points, parity = trend_data(runs)
    gates = gate_data(rows)
    out: list[tuple[str, dict[str, Any]]] = []
    color = alt.Color("target:N", title="target")
    tip = ["target:N", "point:N", "run:O", "time:T", "revision:N"]
    if any(_num(p["latency_ms"]) for p in points):
        base = alt.Chart({"values": points}).transform_filter("isValid(datum.latency_ms)").encode(
            x=_time_x(), y=alt.Y("latency_ms:Q", title="median latency (ms)"), color=color,
            detail="point:N", shape=alt.Shape("point:N", title="batch x sequence"))
        layers = [base.mark_line(), *_points_layers(base, [*tip, "latency_ms:Q", "noisy:N"])]
        out.append(("latency over the recorded runs", _titled(
            alt.layer(*layers), "latency over the recorded runs", NOISY_NOTE)))
    if any(_num(p["speedup"]) for p in points):
        base = alt.Chart({"values": points}).transform_filter("isValid(datum.speedup)").encode(
            x=_time_x(), color=color, detail="point:N")
        band = base.transform_filter("isValid(datum.speedup_lo) && isValid(datum.speedup_hi)")
        band = band.mark_area(opacity=0.15).encode(y="speedup_lo:Q", y2="speedup_hi:Q")
        y = alt.Y("speedup:Q", title="speed-up vs PyTorch (x)")
        dots = base.encode(y=y, shape=alt.Shape("point:N", title="batch x sequence"))
        layers = [band, base.mark_line().encode(y=y),
                  *_points_layers(dots, [*tip, "speedup:Q", "speedup_lo:Q", "speedup_hi:Q", "noisy:N"]),
                  *_gate_rule(gates, "min_speedup", "speed-up vs PyTorch (x)")]
        out.append(("speed-up over the recorded runs", _titled(
            alt.layer(*layers), "speed-up over the recorded runs",
            f"band: the measured interval; {NOISY_NOTE}; dashed: each target's min_speedup gate")))
    if parity:
        base = alt.Chart({"values": parity}).encode(
            x=_time_x(), y=alt.Y("mean_cosine:Q", title="parity (mean cosine)",
                                 scale=alt.Scale(zero=False, padding=12)), color=color)
        layers = [base.mark_line(point=True).encode(tooltip=[*tip[:1], *tip[2:], "mean_cosine:Q"]),
                  *_gate_rule(gates, "mean_cosine", "parity (mean cosine)")]
        out.append(("parity over the recorded runs", _titled(
            alt.layer(*layers), "parity over the recorded runs",
            "dashed: each target's parity gate (mean cosine)")))
    return out


def front_data(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """A search target's variants as chart points: speed-up, mean cosine, size, on the front or
    not, the winner marked."""
    found = rec.get("search")
    search: dict[str, Any] = found if isinstance(found, dict) else {}
    front, out = set(search.get("front") or []), []
    for r in search.get("variants") or []:
        if isinstance(r, dict) and _num(r.get("speedup")) and _num(r.get("mean_cosine")):
            role = "winner" if r.get("name") == search.get("winner") else (
                "on the front" if r.get("name") in front else str(r.get("status", "")))
            out.append({"variant": str(r.get("name")), "speedup": r["speedup"],
                        "mean_cosine": r["mean_cosine"], "size_mb": round(
                            float(r.get("size") or 0) / 2**20, 1), "role": role})
    return out


def front_chart(label: str, rec: dict[str, Any]) -> dict[str, Any] | None:
    """The Pareto front of a search target's last run: speed-up against mean cosine, point size
    the engine's size; the winner and the front marked."""
    import altair as alt

    data = front_data(rec)
    if not data:
        return None
    chart = alt.Chart({"values": data}).mark_point(filled=True, opacity=0.8).encode(
        x=alt.X("speedup:Q", title="speed-up vs PyTorch (x)", scale=alt.Scale(zero=False, padding=12)),
        y=alt.Y("mean_cosine:Q", title="parity (mean cosine)", scale=alt.Scale(zero=False, padding=12)),
        size=alt.Size("size_mb:Q", title="size (MB)"), color=alt.Color("role:N", title="variant"),
        shape=alt.Shape("role:N", title="variant"),
        tooltip=["variant:N", "role:N", "speedup:Q", "mean_cosine:Q", "size_mb:Q"])
    return _titled(chart, f"{label}: the search's variants",
                   "each variant of the last run that passed its gates and was measured; the "
                   "winner and the Pareto front (speed-up, mean cosine, size) marked")


def charts(runs: list[dict[str, Any]], rows: Rows) -> list[tuple[str, dict[str, Any]]]:
    """(title, Vega-Lite spec) of every chart: per recipe the trade-off, each search's front,
    then the trends."""
    out: list[tuple[str, dict[str, Any]]] = []
    for recipe in sorted({label.partition("/")[0] for label in rows}):
        spec = tradeoff_chart(rows, recipe)
        if spec is not None:
            out.append((f"{recipe}: accuracy against latency", spec))
    for label, (rec, _, _) in sorted(rows.items()):
        spec = front_chart(label, rec)
        if spec is not None:
            out.append((f"{label}: the search's variants", spec))
    return out + trend_charts(runs, rows)


# the page

def render(runs: list[dict[str, Any]], note: str = "every recorded line") -> str:
    import vl_convert
    from altair.utils._importers import vl_version_for_vl_convert

    rows = latest(runs)
    bundle = vl_convert.javascript_bundle(vl_version=vl_version_for_vl_convert())  # type: ignore[call-arg]
    last = runs[-1]
    revision = f", revision {str(last['revision'])[:12]}" if last.get("revision") else ""
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='UTF-8'>",
             "<title>deploy-build report</title>", f"<style>{STYLE}</style>",
             f"<script type='text/javascript'>{bundle}</script>", "</head><body>",
             "<h1>deploy-build report</h1>",
             f"<p id='runs'>{len(runs)} recorded run(s): {html_text(note)}. The last: run "
             f"{html_text(last.get('run'))} at {html_text(last.get('time'))}{html_text(revision)}.</p>",
             "<h2>Targets</h2>", table_html(rows)]
    embeds = []
    for i, (title, spec) in enumerate(charts(runs, rows)):
        note = f"<p class='note'>{html_text(spec['description'])}</p>" if spec.get("description") else ""
        parts.append(f"<h2>{html_text(title)}</h2>{note}<div class='chart' id='chart{i}'></div>")
        embeds.append(f"vegaEmbed('#chart{i}', {script_json(spec)}, "
                      "{renderer: 'svg', actions: false}).catch(console.error);")
    parts.append("<script type='text/javascript'>\n" + "\n".join(embeds) + "\n</script>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def branches_note(all_runs: list[dict[str, Any]], branch: str | None) -> str:
    """Which lines the page draws and which it leaves out."""
    counts = branches(all_runs)
    if branch is None:
        return "every recorded line" + (f" (branches {', '.join(counts)})" if counts else "")
    others = {b: n for b, n in counts.items() if b != branch}
    note = f"the lines of branch {branch}"
    if others:
        left = ", ".join(f"{b} ({n})" for b, n in others.items())
        note += f"; left out: {left} (deploy-build report --branch NAME, or --branch all)"
    return note


def write_report(history_file: Path, out: Path, branch: str | None = None) -> Path:
    """The report of ``history_file`` (the lines of ``branch``; None: the default branch, see
    `select`) written to ``out`` atomically."""
    from orchestrator.review.history import read_history

    require_report_extra()
    runs = read_history(history_file)
    if not runs:
        raise FatalError(f"no recorded run in {history_file}: build first (each build that does "
                         "work appends to it), or name the file with --history")
    chosen, picked = select(runs, branch)
    text = render(chosen, branches_note(runs, picked))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, text)
    return out
