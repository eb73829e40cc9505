"""`deploy-build report`: one self-contained HTML page, rendered by a real headless Chromium."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import main

INSTALL = "apt-get install -y chromium"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
GATE_FAILURE = "check parity: mean cosine 0.984 < 0.99 (short by 0.006)"


def _rec(status: str, cos: float, ms: dict[str, float], size: int, key: str, noisy: tuple = (),
         gates: dict | None = None, failures: list | None = None) -> dict:
    speed = {k: round(20 / v, 2) for k, v in ms.items()}
    rec = {"status": status, "keys": {"1:export-onnx": "e" * 64, "2:ort-quantize": key},
           "parity": {"mean_cosine": cos, "min_cosine": cos - 0.005},
           "latency_ms": ms, "speedup": speed,
           "speedup_interval": {k: [round(v * 0.95, 2), round(v * 1.05, 2)] for k, v in speed.items()},
           "noisy": bool(noisy), "size": size, "benchmark_key": "bench-" + key[:8]}
    rec.update({k: v for k, v in (("noisy_points", sorted(noisy)), ("gates", gates),
                                  ("failures", failures)) if v})
    return rec


def nights(count: int = 3, start: int = 1) -> list[dict]:
    """``count`` nightly lines of main: cpu-int8 is measured noisy on night 2 and fails its parity
    gate on the last night; gpu-fp16 fails a task every night."""
    runs = []
    last = start + count - 1
    for night in range(start, last + 1):
        slow = 1 + 0.1 * night
        int8 = _rec("failed" if night == last else "ok", 0.994 - 0.01 * (night == last),
                    {"b1_s128": 8.6 * slow}, 23_000_000, ("c" if night == last else "b") * 64,
                    noisy=("b1_s128",) if night == 2 else (),
                    gates={"mean_cosine": 0.99, "min_speedup": 2.0},
                    failures=[GATE_FAILURE] if night == last else None)
        when = datetime(2026, 12, 1, 2, tzinfo=UTC) + timedelta(days=night - 1)
        runs.append({"run": night, "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "branch": "main",
                     "revision": f"{night % 10}" * 40, "targets": {
                         "bert-edge/cpu-fp32": _rec("ok", 1.0, {"b1_s128": 17.0 * slow,
                                                                "b8_s128": 120 * slow},
                                                    90_000_000, "a" * 64,
                                                    gates={"mean_cosine": 0.9999}),
                         "bert-edge/cpu-int8": int8,
                         "bert-pruned/cpu-fp32": _rec("ok", 0.999, {"b1_s128": 15.0 * slow},
                                                      80_000_000, "d" * 64),
                         "bert-pruned/gpu-fp16": {"status": "failed", "failures": [
                             "step gpu-fp16/1:tensorrt-build failed"]},
                     }})
    return runs


def write_history(path: Path, runs: list[dict] | None = None) -> None:
    """Three nights of main, then a line a feature branch recorded (left out by default)."""
    runs = nights() if runs is None else runs
    feature = {**json.loads(json.dumps(runs[-1])), "run": runs[-1]["run"] + 1, "branch": "feature-x",
               "time": "2026-12-30T09:00:00Z"}
    feature["targets"]["bert-edge/experiment"] = feature["targets"]["bert-edge/cpu-fp32"]
    path.write_text("".join(json.dumps(r) + "\n" for r in [*runs, feature]))


def specs_of(text: str) -> list[dict]:
    return [json.loads(m) for m in re.findall(r"vegaEmbed\('#chart\d+', (.*?), \{renderer", text)]


def table_of(text: str) -> str:
    start = text.index("<table id='targets'>")
    return text[start:text.index("</table>", start)]


def layers(spec: dict) -> list[dict]:
    """Every unit spec of a (layered) chart."""
    return [x for layer in spec.get("layer", [spec]) for x in layers(layer)] if "layer" in spec \
        else [spec]


def mark(unit: dict) -> dict:
    m = unit["mark"]
    return m if isinstance(m, dict) else {"type": m}


def test_report_html_holds_table_and_chart_specs(tmp_path: Path, capsys) -> None:
    history = tmp_path / "history.jsonl"
    write_history(history)
    out = tmp_path / "report.html"
    assert main(["report", "--history", str(history), "--out", str(out)]) == 0
    text = out.read_text()
    assert not re.search(r"<script[^>]+src=", text)  # nothing loaded from elsewhere
    assert not re.search(r"<link[^>]+href=", text)
    table = table_of(text)
    assert table.count("<tr>") == 1 + 4  # header and one row per target; the branch's only
    assert "experiment" not in table
    # the status, and why it failed (the manifest's failures), in the table
    assert ("<td>bert-edge</td><td>cpu-int8</td><td class='failed'>failed</td>"
            "<td class='why'>parity: mean cosine 0.984 &lt; 0.99 (short by 0.006)</td>"
            "<td>0.9840/0.9790</td>") in table
    assert "<td class='why'>step gpu-fp16/1:tensorrt-build failed</td>" in table
    # the speed-up with its measured interval; the change judged on it, as diff judges it
    assert "b1_s128 1.79x [1.7-1.88]" in table
    assert ("status ok → failed; parity -0.0100; b1_s128 +8.4% [-2.1%..+20.0%] vs PyTorch: noise "
            "(the previous run measured noisy); rebuilt 2:ort-quantize") in table
    assert "b1_s128 +8.3% (same engine re-measured)" in table  # cpu-fp32: its benchmark key held
    assert "the lines of branch main; left out: feature-x (1)" in text
    specs = specs_of(text)
    titles = [s["title"] for s in specs]
    assert titles == ["bert-edge: accuracy against latency", "bert-pruned: accuracy against latency",
                      "latency over the recorded runs", "speed-up over the recorded runs",
                      "parity over the recorded runs"]
    edge = next(iter(specs[0]["datasets"].values()))  # altair names the inline data
    assert {(d["target"], d["point"]) for d in edge if "point" in d} == {
        ("cpu-fp32", "b1_s128"), ("cpu-fp32", "b8_s128"), ("cpu-int8", "b1_s128")}
    assert main(["report", "--history", str(tmp_path / "none.jsonl"), "--out", str(out)]) == 1
    assert "no recorded run in" in capsys.readouterr().err


def test_chart_specs_mark_noise_gates_intervals_and_dates(tmp_path: Path) -> None:
    history, out = tmp_path / "history.jsonl", tmp_path / "report.html"
    write_history(history)
    assert main(["report", "--history", str(history), "--out", str(out)]) == 0
    specs = {s["title"]: s for s in specs_of(out.read_text())}
    for title, spec in specs.items():
        units = layers(spec)
        # no text marks of its own: names are in legends and tooltips, so no label can collide
        assert all(mark(u)["type"] != "text" for u in units), title
        assert spec["config"]["axis"]["labelOverlap"] is True  # Vega hides overlapping axis labels
        points = [u for u in units if mark(u)["type"] == "point"]
        if points:  # noisy points hollow, quiet ones filled
            assert {(mark(u)["filled"], u["transform"][-1]["filter"]) for u in points} == {
                (True, "!datum.noisy"), (False, "datum.noisy")}, title
        if "over the recorded runs" in title:  # dates on the time axis (UTC)
            x = next(u["encoding"]["x"] for u in units if "x" in u.get("encoding", {}))
            assert x["field"] == "time" and x["type"] == "temporal" and x["scale"]["type"] == "utc"
            assert x["axis"]["format"] == "%b %d"

    def rule_values(title: str, field: str) -> dict[str, float]:
        rules = [u for u in layers(specs[title]) if mark(u)["type"] == "rule"]
        assert [u["encoding"]["y"]["field"] for u in rules] == [field]
        data = specs[title]["datasets"][rules[0]["data"]["name"]]
        return {d["target"]: d[field] for d in data}

    assert rule_values("speed-up over the recorded runs", "min_speedup") == {"bert-edge/cpu-int8": 2.0}
    assert rule_values("parity over the recorded runs", "mean_cosine") == {
        "bert-edge/cpu-fp32": 0.9999, "bert-edge/cpu-int8": 0.99}
    assert rule_values("bert-edge: accuracy against latency", "mean_cosine") == {
        "cpu-fp32": 0.9999, "cpu-int8": 0.99}
    speed = specs["speed-up over the recorded runs"]
    band = next(u for u in layers(speed) if mark(u)["type"] == "area")  # the measured interval
    assert (band["encoding"]["y"]["field"], band["encoding"]["y2"]["field"]) == ("speedup_lo", "speedup_hi")
    rows = next(d for d in speed["datasets"].values() if d and "speedup_lo" in d[0])
    night2 = [r for r in rows if r["run"] == 2 and r["target"] == "bert-edge/cpu-int8"]
    assert night2 == [{"run": 2, "time": "2026-12-02T02:00:00Z", "revision": "2" * 12,
                       "target": "bert-edge/cpu-int8", "point": "b1_s128", "latency_ms": 8.6 * 1.2,
                       "speedup": 1.94, "speedup_lo": 1.84, "speedup_hi": 2.04, "noisy": True}]


def _run(history: Path, out: Path, branch: str | None) -> int:
    from orchestrator.commands.report import run

    return run(argparse.Namespace(history=str(history), out=str(out), manifests=None, cache=None,
                                  branch=branch))


def test_only_one_branchs_lines_by_default(tmp_path: Path, capsys) -> None:
    from orchestrator.review.reportpage import select

    history, out = tmp_path / "history.jsonl", tmp_path / "report.html"
    runs = nights()
    runs.insert(0, {**json.loads(json.dumps(runs[0])), "run": 0})
    del runs[0]["branch"]  # a line from before branches were recorded: always kept
    write_history(history, runs)
    assert _run(history, out, None) == 0
    assert "4 recorded run(s): the lines of branch main; left out: feature-x (1)" in \
        out.read_text().replace("\n", " ")
    assert _run(history, out, "feature-x") == 0
    text = out.read_text()
    assert "experiment" in table_of(text) and "2 recorded run(s): the lines of branch feature-x" in text
    assert _run(history, out, "all") == 0
    assert "5 recorded run(s): every recorded line (branches feature-x, main)" in out.read_text()
    from orchestrator.errors import FatalError

    with pytest.raises(FatalError, match="no recorded run of branch 'nope'.*feature-x, main"):
        _run(history, out, "nope")
    # no main: master; neither: every line
    master = [{**r, "branch": "master"} for r in nights()]
    assert [r["run"] for r in select(master, None)[0]] == [1, 2, 3] and select(master, None)[1] == "master"
    other = [{**r, "branch": "dev"} for r in nights()]
    assert select(other, None) == (other, None)


def test_without_the_report_extra_report_says_what_to_install(tmp_path: Path, capsys,
                                                              monkeypatch) -> None:
    history = tmp_path / "history.jsonl"
    write_history(history)
    monkeypatch.setitem(sys.modules, "altair", None)  # `import altair` raises ImportError
    assert main(["report", "--history", str(history), "--out", str(tmp_path / "r.html")]) == 1
    assert "install the report extra: pip install 'deploy-build[report]'" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def render_dom(page: Path, tmp: Path) -> str:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=15000",
           "--dump-dom", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# Once every chart has drawn: the visible text of each chart's svg (axis, legend and title
# labels; Vega hides an overlapping axis label by its opacity) and every pair whose boxes overlap.
OVERLAPS = """<script>
function probe() {
  var charts = document.querySelectorAll('.chart');
  if (document.querySelectorAll('.chart svg').length < charts.length) { setTimeout(probe, 100); return; }
  var found = [], texts = 0;
  document.querySelectorAll('.chart svg').forEach(function (svg, i) {
    var boxes = [];
    svg.querySelectorAll('text').forEach(function (t) {
      var hidden = t.getAttribute('opacity') === '0' || getComputedStyle(t).opacity === '0';
      if (t.textContent.trim() && !hidden) boxes.push([t.textContent, t.getBoundingClientRect()]);
    });
    texts += boxes.length;
    for (var a = 0; a < boxes.length; a++) for (var b = a + 1; b < boxes.length; b++) {
      var p = boxes[a][1], q = boxes[b][1];
      var w = Math.min(p.right, q.right) - Math.max(p.left, q.left);
      var h = Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top);
      if (w > 1 && h > 1) found.push([i, boxes[a][0], boxes[b][0]]);
    }
  });
  var pre = document.createElement('pre');
  pre.id = 'overlaps';
  pre.textContent = JSON.stringify({texts: texts, overlaps: found});
  document.body.appendChild(pre);
}
setTimeout(probe, 100);
</script>"""


def overlapping_labels(page: Path, tmp: Path) -> dict[str, Any]:
    """The page rendered with OVERLAPS added: {texts: how many were measured, overlaps: [...]}."""
    text = page.read_text()
    end = text.rindex("</body>")  # the last one: the inlined bundle holds the string too
    probed = tmp / f"probed-{page.name}"
    probed.write_text(text[:end] + OVERLAPS + text[end:])
    dom = render_dom(probed, tmp)
    found = re.search(r'<pre id="overlaps">(.*?)</pre>', dom)
    assert found, "the probe did not run"
    result: dict[str, Any] = json.loads(found[1])
    return result


@pytest.mark.skipif(CHROMIUM is None, reason=f"no chromium: {INSTALL}")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    write_history(history)
    out = tmp_path / "report.html"
    assert main(["report", "--history", str(history), "--out", str(out)]) == 0
    dom = render_dom(out, tmp_path)
    dom = dom[dom.index("<h1>deploy-build report</h1>"):]  # the head holds the inlined scripts
    start = dom.index('<table id="targets">')
    table = dom[start:dom.index("</table>", start)]
    assert table.count("<tr>") == 5 and "<td>bert-pruned</td><td>gpu-fp16</td>" in table
    charts = re.findall(r"<div class=\"chart[^\"]*\" id=\"chart(\d)\"[^>]*>(.*?)</div>\s*(?=<h2|<script)",
                        dom, re.S)
    assert [i for i, _ in charts] == ["0", "1", "2", "3", "4"]
    for _, body in charts:  # each chart was drawn by Vega: an svg with marks in it
        assert "<svg" in body and "role-mark" in body, body[:500]
    assert dom.count("mark-symbol") >= 2  # the trade-off scatter points
    assert dom.count("mark-line") >= 3  # the three trends
    speed = dict(charts)["3"]
    symbols = re.findall(r'<path aria-label="([^"]*)"[^>]*role="graphics-symbol"[^>]*fill="([^"]+)"', speed)
    noisy = [fill for label, fill in symbols if "noisy: true" in label]
    quiet = [fill for label, fill in symbols if "noisy: false" in label]
    assert noisy == ["transparent"] and len(quiet) == 11 and "transparent" not in quiet  # hollow
    assert re.search(r'aria-label="[^"]*gate min_speedup: 2"[^>]*stroke-dasharray="6,4"', speed)
    assert "mark-area" in speed  # the measured interval as a band
    assert "Dec 02" in speed  # dates on the time axis


@pytest.mark.skipif(CHROMIUM is None, reason=f"no chromium: {INSTALL}")
def test_no_two_labels_of_a_chart_overlap(tmp_path: Path) -> None:
    """Sixty nights (a crowded time axis), long target names, every chart: no visible text of a
    chart overlaps another. The probe itself finds two labels drawn on each other."""
    runs = nights(60)
    for r in runs:
        r["targets"]["bert-edge/a-rather-long-target-name-for-the-arm64-int8-variant"] = \
            r["targets"]["bert-edge/cpu-int8"]
    history, out = tmp_path / "history.jsonl", tmp_path / "report.html"
    write_history(history, runs)
    assert main(["report", "--history", str(history), "--out", str(out)]) == 0
    result = overlapping_labels(out, tmp_path)
    assert result["texts"] > 100 and result["overlaps"] == []
    crafted = tmp_path / "crafted.html"
    crafted.write_text("<html><body><div class='chart'><svg width='200' height='50'>"
                       "<text x='10' y='20'>cpu-int8</text><text x='14' y='22'>cpu-fp32</text>"
                       "</svg></div></body></html>")
    assert overlapping_labels(crafted, tmp_path)["overlaps"] == [[0, "cpu-int8", "cpu-fp32"]]


def test_a_search_targets_front_is_drawn_from_its_last_run() -> None:
    """Issue 19: the report plots each search's variants, the winner and the Pareto front."""
    pytest.importorskip("altair")
    from orchestrator.review.history import search_record
    from orchestrator.review.reportpage import front_chart, front_data

    section = {"winner": "ov", "front": ["ov", "ort"], "objective": "latency at b1_s128",
               "variants": [
                   {"name": "ov", "status": "ok", "speedup": 4.1, "interval": [4.0, 4.2],
                    "mean_cosine": 0.997, "size": 23_000_000, "params": {}},
                   {"name": "ort", "status": "ok", "speedup": 2.7, "mean_cosine": 0.999,
                    "size": 22_000_000},
                   {"name": "slow", "status": "ok", "speedup": 1.2, "mean_cosine": 0.99,
                    "size": 90_000_000},
                   {"name": "bad", "status": "failed", "why": "parity failed"}]}
    rec = {"status": "ok", "search": search_record(section)}
    assert "params" not in rec["search"]["variants"][0]  # only what the chart needs
    roles = {d["variant"]: d["role"] for d in front_data(rec)}
    assert roles == {"ov": "winner", "ort": "on the front", "slow": "ok"}  # "bad": not measured
    spec = front_chart("bert-auto/cpu-auto", rec)
    assert spec is not None and spec["title"] == "bert-auto/cpu-auto: the search's variants"
    assert front_chart("x/y", {"status": "ok"}) is None
