"""`deploy-build report [--out report.html]`: one self-contained HTML page from the history.

The page needs no network: Vega-Lite charts (built with altair) are drawn by the vega-embed
bundle that vl-convert ships, inlined once in the page. It holds a table of recipes x targets
(status, parity, size, latency, speed-up, change since the previous run), per recipe a chart of
accuracy against latency for its targets, and the trend of latency and parity over the recorded
runs. altair and vl-convert are imported only when a report is written.

The history is data (target names, statuses, step and point names come from manifests): every
text and attribute goes through `escape.html_text` and every chart's spec through
`escape.script_json`, so no string can end, comment out or open a `<script>`; values that are not
numbers where numbers belong are shown as text, not a crash.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from orchestrator.errors import EXIT_OK, FatalError
from orchestrator.escape import html_text, script_json

STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:left;font-size:.9em}th{background:#f3f3f3}td.ok{color:#1a7f37}td.failed{color:#c00}
.chart{margin:1em 0}"""


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


def _figures(rec: dict[str, Any], field: str) -> dict[str, Any]:
    value = rec.get(field)
    return value if isinstance(value, dict) else {}


def latest(runs: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], dict[str, Any] | None, int]]:
    """Per target: its last record, the one before it (or None) and the run it came from."""
    out: dict[str, tuple[dict[str, Any], dict[str, Any] | None, int]] = {}
    for entry in runs:
        for label, rec in _targets(entry):
            before = out[label][0] if label in out else None
            out[label] = (rec, before, _run_number(entry.get("run", 0)))
    return dict(sorted(out.items()))


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
    for k, v in _figures(rec, "latency_ms").items():
        old = _figures(before, "latency_ms").get(k)
        if _num(old) and _num(v) and old and v and old != v:
            parts.append(f"{k} {(v - old) / old * 100:+.1f}%")
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


def table_html(rows: dict[str, tuple[dict[str, Any], dict[str, Any] | None, int]]) -> str:
    head = ("recipe", "target", "status", "parity (mean/min cosine)", "size", "latency (median)",
            "speed-up vs PyTorch", "change since the previous run", "run")
    out = ["<table id='targets'><thead><tr>" + "".join(f"<th>{html_text(h)}</th>" for h in head)
           + "</tr></thead><tbody>"]
    for label, (rec, before, run) in rows.items():
        recipe, _, target = label.partition("/")
        lat = ", ".join(f"{k} {_g(v)} ms" for k, v in _figures(rec, "latency_ms").items() if v) or "-"
        speed = ", ".join(f"{k} {_g(v)}x" for k, v in _figures(rec, "speedup").items() if v) or "-"
        if rec.get("noisy"):
            speed += " (noisy)"
        cells = (recipe, target, str(rec.get("status", "?")), _parity(_figures(rec, "parity")),
                 _mb(rec.get("size")), lat, speed, _change(rec, before), str(run))
        status = html_text(rec.get("status", ""))
        out.append("<tr>" + "".join(
            f"<td class='{status}'>{html_text(c)}</td>" if i == 2 else f"<td>{html_text(c)}</td>"
            for i, c in enumerate(cells)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def tradeoff_data(rows: dict[str, Any], recipe: str) -> list[dict[str, Any]]:
    data = []
    for label, (rec, _, _) in rows.items():
        if label.partition("/")[0] != recipe:
            continue
        cos = _figures(rec, "parity").get("mean_cosine")
        for point, ms in _figures(rec, "latency_ms").items():
            if ms and cos is not None:
                data.append({"target": label.partition("/")[2], "point": point, "latency_ms": ms,
                             "mean_cosine": cos, "speedup": _figures(rec, "speedup").get(point)})
    return data


def trend_data(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    data = []
    for entry in runs:
        for label, rec in _targets(entry):
            cos = _figures(rec, "parity").get("mean_cosine")
            for point, ms in _figures(rec, "latency_ms").items():
                data.append({"run": entry.get("run"), "time": entry.get("time"), "target": label,
                             "series": f"{label} {point}", "latency_ms": ms, "mean_cosine": cos})
            if not _figures(rec, "latency_ms") and cos is not None:
                data.append({"run": entry.get("run"), "time": entry.get("time"), "target": label,
                             "series": label, "latency_ms": None, "mean_cosine": cos})
    return data


def charts(runs: list[dict[str, Any]], rows: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(title, Vega-Lite spec) of every chart: per recipe the trade-off, then the two trends."""
    import altair as alt

    out: list[tuple[str, dict[str, Any]]] = []
    for recipe in sorted({label.partition("/")[0] for label in rows}):
        data = tradeoff_data(rows, recipe)
        if not data:
            continue
        base = alt.Chart({"values": data}).encode(
            x=alt.X("latency_ms:Q", title="median latency (ms)", scale=alt.Scale(zero=False)),
            y=alt.Y("mean_cosine:Q", title="parity (mean cosine)", scale=alt.Scale(zero=False)),
            color=alt.Color("target:N"), shape=alt.Shape("point:N", title="batch x sequence"),
            tooltip=["target:N", "point:N", "latency_ms:Q", "mean_cosine:Q", "speedup:Q"])
        chart = (base.mark_point(size=90, filled=True)
                 + base.mark_text(dx=8, align="left").encode(text="target:N"))
        out.append((f"{recipe}: accuracy against latency", chart.properties(
            width=520, height=300, title=f"{recipe}: accuracy against latency").to_dict()))
    trend = trend_data(runs)
    if trend:
        src = alt.Chart({"values": trend})
        lat = src.transform_filter("datum.latency_ms != null").mark_line(point=True).encode(
            x=alt.X("run:O", title="run"), y=alt.Y("latency_ms:Q", title="median latency (ms)"),
            color=alt.Color("series:N", title="target, point"),
            tooltip=["series:N", "run:O", "time:N", "latency_ms:Q"])
        par = src.transform_filter("datum.mean_cosine != null").mark_line(point=True).encode(
            x=alt.X("run:O", title="run"),
            y=alt.Y("mean_cosine:Q", title="parity (mean cosine)", scale=alt.Scale(zero=False)),
            color=alt.Color("target:N"), tooltip=["target:N", "run:O", "time:N", "mean_cosine:Q"])
        out.append(("latency over the recorded runs",
                    lat.properties(width=520, height=260, title="latency over the recorded runs").to_dict()))
        out.append(("parity over the recorded runs",
                    par.properties(width=520, height=260, title="parity over the recorded runs").to_dict()))
    return out


def render(runs: list[dict[str, Any]]) -> str:
    import vl_convert
    from altair.utils._importers import vl_version_for_vl_convert

    rows = latest(runs)
    bundle = vl_convert.javascript_bundle(vl_version=vl_version_for_vl_convert())  # type: ignore[call-arg]
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='UTF-8'>",
             "<title>deploy-build report</title>", f"<style>{STYLE}</style>",
             f"<script type='text/javascript'>{bundle}</script>", "</head><body>",
             "<h1>deploy-build report</h1>",
             f"<p>{len(runs)} recorded run(s); the last: run {html_text(runs[-1].get('run'))} at "
             f"{html_text(runs[-1].get('time'))}.</p>", "<h2>Targets</h2>", table_html(rows)]
    embeds = []
    for i, (title, spec) in enumerate(charts(runs, rows)):
        parts.append(f"<h2>{html_text(title)}</h2><div class='chart' id='chart{i}'></div>")
        embeds.append(f"vegaEmbed('#chart{i}', {script_json(spec)}, "
                      "{renderer: 'svg', actions: false}).catch(console.error);")
    parts.append("<script type='text/javascript'>\n" + "\n".join(embeds) + "\n</script>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(history_file: Path, out: Path) -> Path:
    from orchestrator.history import read_history

    runs = read_history(history_file)
    if not runs:
        raise FatalError(f"no recorded run in {history_file}: build first (each build that does "
                         "work appends to it), or name the file with --history")
    text = render(runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    return out


def run(args: argparse.Namespace) -> int:
    from orchestrator.commands.build import project_root
    from orchestrator.history import history_path

    root = project_root(Path.cwd())
    if args.history:
        path = Path(args.history)
    else:
        cache = Path(args.cache or os.environ.get("DEPLOY_BUILD_CACHE") or root / "cache")
        path = history_path(cache, Path(args.manifests) if args.manifests else None)
    out = Path(args.out) if args.out else root / "build" / "report.html"
    print(f"report: {write_report(path, out)}", file=sys.stderr)
    return EXIT_OK
