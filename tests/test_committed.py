"""Committed manifests (--manifests DIR) and the nightly report, on two tiny real recipes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_report import CHROMIUM, render_dom

from orchestrator.cli import main
from orchestrator.review.committed import MEASURED, reproducible_part

RECIPE = """\
name: @NAME@
model:
  source: @MODEL@
inputs:
  shapes: {batch: [1], sequence: [16]}
  samples: samples.txt
targets:
  cpu-int8:
    steps:
      - export-onnx: {opset: 17}
      - ort-quantize: {mode: dynamic, per_channel: @PC@}
    checks:
      parity: {mean_cosine: 0.5, min_cosine: 0.5}
      benchmark: {batch: [1], sequence: [16], threads: 1, warmup: 1, min_runs: 4, max_runs: 8,
                  window: 4, max_seconds: 1}
  gpu-fp32:
    hardware: {device: cuda}
    steps:
      - export-onnx: {opset: 17}
    checks:
      parity: {}
"""


def _recipes(tmp: Path, model: Path) -> list[str]:
    (tmp / "pyproject.toml").write_text("")
    (tmp / "samples.txt").write_text("the quick brown fox\nhello world\nhow fast does this run\n")
    paths = []
    for name, pc in (("edge-a", "true"), ("edge-b", "false")):
        p = tmp / f"{name}.yaml"
        p.write_text(RECIPE.replace("@NAME@", name).replace("@MODEL@", str(model))
                     .replace("@PC@", pc))
        paths.append(str(p))
    return paths


def _build(tmp: Path, recipes: list[str], n: int, manifests: Path) -> None:
    rc = main([*recipes, "--cache", str(tmp / f"cache{n}"), "--out", str(tmp / f"out{n}"),
               "--manifests", str(manifests)])
    assert rc == 0  # the cuda targets are skipped on this machine (no CUDA device), cleanly


@pytest.mark.slow  # four real builds of a tiny model (about a minute on 2 busy cores)
def test_two_builds_from_empty_caches_write_identical_manifests(tiny_model_dir: Path, tmp_path: Path,
                                                                 capsys) -> None:
    recipes = _recipes(tmp_path, tiny_model_dir)
    committed = tmp_path / "manifests"
    gpu = committed / "edge-a" / "gpu-fp32.json"  # written by the GPU machine: never overwritten
    gpu.parent.mkdir(parents=True)
    gpu.write_text('{"from": "the gpu machine"}\n')
    _build(tmp_path, recipes, 1, committed)
    first = {p.relative_to(committed).as_posix(): p.read_text() for p in committed.rglob("*.json")}
    assert sorted(first) == ["edge-a/cpu-int8.json", "edge-a/gpu-fp32.json", "edge-b/cpu-int8.json"]
    assert first["edge-a/gpu-fp32.json"] == '{"from": "the gpu machine"}\n'
    # the committed file is the build/ manifest byte for byte
    assert first["edge-a/cpu-int8.json"] == (tmp_path / "out1/edge-a/cpu-int8/manifest.json").read_text()
    # edge-b is edge-a with per_channel false: the review diff names the key and why, the parity
    # and size changes, and the latency change judged through the speed-ups each build paired
    capsys.readouterr()
    main(["diff", str(committed / "edge-a/cpu-int8.json"), str(committed / "edge-b/cpu-int8.json"),
          "--format", "md"])
    md = capsys.readouterr().out
    assert "- `2:ort-quantize` " in md and "param changed: per_channel true -> false" in md
    assert "`1:export-onnx`" not in md  # same model, same params: the same export task
    row = next(line for line in md.splitlines() if line.startswith("| `edge-b/cpu-int8`"))
    cells = row.split(" | ")
    assert " → " in cells[2] and " → " in cells[3]  # parity and size changed, with arrows
    assert "b1_s16 " in cells[4] and "vs PyTorch" in cells[4], cells[4]
    second = tmp_path / "manifests2"
    _build(tmp_path, recipes, 2, second)
    for rel in ("edge-a/cpu-int8.json", "edge-b/cpu-int8.json"):
        a, b = json.loads(first[rel]), json.loads((second / rel).read_text())
        assert a["benchmark"]["results"]["b1_s16"]["median_ms"] > 0
        assert reproducible_part(a) == reproducible_part(b), rel
        assert any(k.startswith("steps.1.outputs") for k in reproducible_part(a))  # engine digests
        assert "benchmark.*" in MEASURED
    assert not (second / "edge-a" / "gpu-fp32.json").exists()  # skipped here: not written
    # the history lies beside the manifests folder; each multi-recipe build wrote the report
    history = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2 and set(history[1]["targets"]) == {
        "edge-a/cpu-int8", "edge-a/gpu-fp32", "edge-b/cpu-int8", "edge-b/gpu-fp32"}
    assert history[1]["targets"]["edge-a/gpu-fp32"] == {"status": "skipped"}
    report = tmp_path / "out2" / "report.html"
    text = report.read_text()
    titles = re.findall(r'"title": "([^"]+)"', text)
    assert "edge-a: accuracy against latency" in titles and "edge-b: accuracy against latency" in titles
    if CHROMIUM is None:
        pytest.skip("no chromium: apt-get install -y chromium (the HTML was checked, not rendered)")
    dom = render_dom(report, tmp_path)
    body = dom[dom.index("<body>"):]
    for i in (0, 1):  # both recipes' trade-off charts drew their points
        chart = body[body.index(f'id="chart{i}"'):]
        chart = chart[:chart.index("</svg>")]
        assert "mark-symbol" in chart
