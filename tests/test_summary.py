"""The table printed after a build."""

from __future__ import annotations

from conftest import FAKE_RECIPE, Project

from orchestrator.targets.summary import TargetRow, render


def test_the_table_shows_size_parity_latency_and_speedup_with_interval() -> None:
    manifest = {
        "status": "ok",
        "artifacts": [{"size": 23 * 1024 * 1024}],
        "checks": {"parity": {"mean_cosine": 0.994123, "min_cosine": 0.9891, "top1_agreement": 1.0}},
        "benchmark": {"results": {"b1_s128": {"median_ms": 8.61, "speedup": 2.91,
                                              "speedup_interval": [2.8, 3.02]}}},
    }
    text = render([TargetRow("bert-edge/cpu-int8", manifest, "ok", []),
                   TargetRow("bert-edge/cpu-fp16", None, "failed",
                             ["step cpu-fp16/2:ort-quantize failed"])])
    lines = text.splitlines()
    assert lines[0].split("  ")[0] == "target"
    assert "why not ok" in lines[0]
    row = lines[2]
    for cell in ("bert-edge/cpu-int8", "ok", "23.0 MB", "0.994123/0.989100, 1.000", "b1_s128 8.6 ms",
                 "b1_s128 2.91x [2.80-3.02]"):
        assert cell in row, cell
    assert lines[3].startswith("bert-edge/cpu-fp16") and "step cpu-fp16/2:ort-quantize failed" in lines[3]


def test_a_build_ends_with_the_table(project: Project, capsys) -> None:
    s = project.build_json(project.recipe(FAKE_RECIPE), capsys)
    table = s["err"].split("\n\n")[-2].splitlines()
    assert table[0].startswith("target") and "why not ok" not in table[0]  # nothing failed
    assert [r.split()[:2] for r in table[2:]] == [["demo/a", "ok"], ["demo/b", "ok"]]
