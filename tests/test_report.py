"""`deploy-build report`: one self-contained HTML page, rendered by a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.cli import main

INSTALL = "apt-get install -y chromium"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _rec(status: str, cos: float, ms: dict[str, float], size: int, key: str) -> dict:
    return {"status": status, "keys": {"1:export-onnx": "e" * 64, "2:ort-quantize": key},
            "parity": {"mean_cosine": cos, "min_cosine": cos - 0.005},
            "latency_ms": ms, "speedup": {k: round(20 / v, 2) for k, v in ms.items()},
            "noisy": False, "size": size}


def write_history(path: Path) -> None:
    runs = []
    for night in (1, 2, 3):
        slow = 1 + 0.1 * night
        runs.append({"run": night, "time": f"2026-12-0{night}T02:00:00Z", "targets": {
            "bert-edge/cpu-fp32": _rec("ok", 1.0, {"b1_s128": 17.0 * slow, "b8_s128": 120 * slow},
                                       90_000_000, "a" * 64),
            "bert-edge/cpu-int8": _rec("ok", 0.994 - 0.01 * (night == 3), {"b1_s128": 8.6 * slow},
                                       23_000_000, ("b" if night < 3 else "c") * 64),
            "bert-pruned/cpu-fp32": _rec("ok", 0.999, {"b1_s128": 15.0 * slow}, 80_000_000, "d" * 64),
            "bert-pruned/gpu-fp16": {"status": "failed"},
        }})
    path.write_text("".join(json.dumps(r) + "\n" for r in runs))


def test_report_html_holds_table_and_chart_specs(tmp_path: Path, capsys) -> None:
    history = tmp_path / "history.jsonl"
    write_history(history)
    out = tmp_path / "report.html"
    assert main(["report", "--history", str(history), "--out", str(out)]) == 0
    text = out.read_text()
    assert not re.search(r"<script[^>]+src=", text)  # nothing loaded from elsewhere
    assert not re.search(r"<link[^>]+href=", text)
    start = text.index("<table id='targets'>")
    table = text[start:text.index("</table>", start)]
    assert table.count("<tr>") == 1 + 4  # header and one row per target
    assert "<td>bert-edge</td><td>cpu-int8</td><td class='ok'>ok</td><td>0.9840/0.9790</td>" in table
    assert "parity -0.0100" in table and "rebuilt 2:ort-quantize" in table
    specs = [json.loads(m) for m in re.findall(r"vegaEmbed\('#chart\d+', (.*?), \{renderer", text)]
    titles = [s["title"] for s in specs]
    assert titles == ["bert-edge: accuracy against latency", "bert-pruned: accuracy against latency",
                      "latency over the recorded runs", "parity over the recorded runs"]
    edge = next(iter(specs[0]["datasets"].values()))  # altair names the inline data
    assert {(d["target"], d["point"]) for d in edge} == {
        ("cpu-fp32", "b1_s128"), ("cpu-fp32", "b8_s128"), ("cpu-int8", "b1_s128")}
    assert main(["report", "--history", str(tmp_path / "none.jsonl"), "--out", str(out)]) == 1
    assert "no recorded run in" in capsys.readouterr().err


def render_dom(page: Path, tmp: Path) -> str:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=15000",
           "--dump-dom", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason=f"no chromium: {INSTALL}")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    write_history(history)
    out = tmp_path / "report.html"
    assert main(["report", "--history", str(history), "--out", str(out)]) == 0
    dom = render_dom(out, tmp_path)
    dom = dom[dom.index("<body>"):]  # the head holds the inlined scripts
    start = dom.index('<table id="targets">')
    table = dom[start:dom.index("</table>", start)]
    assert table.count("<tr>") == 5 and "<td>bert-pruned</td><td>gpu-fp16</td>" in table
    charts = re.findall(r"<div class=\"chart[^\"]*\" id=\"chart(\d)\"[^>]*>(.*?)</div>\s*(?=<h2|<script)",
                        dom, re.S)
    assert [i for i, _ in charts] == ["0", "1", "2", "3"]
    for _, body in charts:  # each chart was drawn by Vega: an svg with marks in it
        assert "<svg" in body and "role-mark" in body, body[:500]
    assert dom.count("mark-symbol") >= 2  # the trade-off scatter points
    assert dom.count("mark-line") >= 2  # the two trends
