"""Issue 17, one window for many engines: the benchmarks of one model source that are ready
together are timed in one round-robin window against one PyTorch reference, each result still
cached under its own engine's key. Timing-free with a fake clock; the build on real engines (a
tiny BERT: ONNX Runtime fp32 and int8, OpenVINO) asserts structure, never speed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES
from test_benchmark import FakeClock, feed

from orchestrator.cli import main
from orchestrator.steps.benchmark import MIN_ROUNDS, BenchmarkParams, measure_robin


def test_round_robin_rotates_every_engine_and_the_reference_through_each_position() -> None:
    clock = FakeClock()
    p = BenchmarkParams(warmup=1, window=2, min_runs=2, max_runs=60, max_seconds=100)
    r = measure_robin([clock.engine(2.0, "A"), clock.engine(3.0, "B")], clock.engine(6.0, "R"),
                      feed(), p, clock=clock)
    assert clock.calls[:3] == ["A", "B", "R"]  # warm-up
    windows = "".join(clock.calls[3:])[::2]
    assert windows[:9] == "ABR" "BRA" "RAB"  # the order rotates round by round
    assert len(r["rounds"][0]) == len(r["rounds"][1]) == MIN_ROUNDS
    assert r["rounds"][0] == [[pytest.approx(2.0), pytest.approx(6.0)]] * MIN_ROUNDS
    assert r["rounds"][1] == [[pytest.approx(3.0), pytest.approx(6.0)]] * MIN_ROUNDS
    # one reference for both: it ran as many windows as each engine, not twice as many
    assert r["reference"]["runs"] == r["engines"][0]["runs"] == r["engines"][1]["runs"]


def test_a_stable_engine_leaves_the_window_and_the_others_go_on() -> None:
    clock = FakeClock()
    p = BenchmarkParams(warmup=0, window=2, min_runs=2, max_runs=40, max_seconds=100)
    wobbly = iter([1.0, 1.0, 9.0, 9.0] * 40)  # its window medians jump: never stable

    def b(feed: Any) -> None:
        clock.now += next(wobbly) / 1000.0
        clock.calls.append("B")

    r = measure_robin([clock.engine(2.0, "A"), b], clock.engine(6.0, "R"), feed(), p, clock=clock)
    assert len(r["rounds"][0]) == MIN_ROUNDS  # A was stable: it stopped
    assert len(r["rounds"][1]) > MIN_ROUNDS  # B was not: it went on, with the reference
    assert r["engines"][0]["stable"] is True
    assert r["engines"][0]["runs"] < r["engines"][1]["runs"] <= p.max_runs


RECIPE = """\
name: g
plugins: [slow_steps.py]
model:
  source: ./model
inputs:
  shapes: {{batch: [1, 2], sequence: [16]}}
targets:
  fp32:
    steps:
      - export-onnx: {{opset: 17}}
    checks:
      benchmark: {{threads: 1, warmup: 1, min_runs: 4, max_runs: 20, window: 2, max_seconds: 2}}
  int8:
    steps:
      - export-onnx: {{opset: 17}}
      - ort-quantize: {{mode: dynamic, per_channel: {per_channel}}}
    checks:
      benchmark: {{threads: 1, warmup: 1, min_runs: 4, max_runs: 20, window: 2, max_seconds: 2,
                  batch: [1]}}
  ov:
    steps:
      - export-onnx: {{opset: 17}}
      - openvino-convert: {{}}
    checks:
      benchmark: {{threads: 1, warmup: 1, min_runs: 4, max_runs: 20, window: 2, max_seconds: 2}}
{extra}"""

BROKEN = """\
  broken:
    steps:
      - export-onnx: {opset: 17}
      - onnx-unrunnable: {}
    checks:
      benchmark: {threads: 1, warmup: 1, min_runs: 4, max_runs: 20, window: 2, max_seconds: 2}
"""


def _build(root: Path, capsys: pytest.CaptureFixture[str], per_channel: bool = True,
           extra: str = "") -> tuple[int, dict[str, Any], str]:
    (root / "g.yaml").write_text(RECIPE.format(per_channel=str(per_channel).lower(), extra=extra))
    capsys.readouterr()
    rc = main([str(root / "g.yaml"), "--cache", str(root / "cache"), "--out", str(root / "build"),
               "--json"])
    out = capsys.readouterr()
    return rc, {t["label"]: t for t in json.loads(out.out)["tasks"]}, out.err


def _bench(root: Path, target: str) -> dict[str, Any]:
    m = json.loads((root / "build" / "g" / target / "manifest.json").read_text())
    bench: dict[str, Any] = m["benchmark"]
    return bench


@pytest.mark.slow
def test_engines_ready_together_share_one_window_and_keep_their_own_keys(
        tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    shutil.copy(FIXTURES / "slow_steps.py", tmp_path / "slow_steps.py")
    rc, tasks, err = _build(tmp_path, capsys)
    assert rc == 0, err
    benches = [f"{t}/check:benchmark" for t in ("fp32", "int8", "ov")]
    assert {tasks[b]["status"] for b in benches} == {"run"}
    assert len({tasks[b]["key"] for b in benches}) == 3  # each under its own engine's key
    lines = err.splitlines()
    starts = [i for i, x in enumerate(lines) if x.startswith("RUN   ") and "benchmark" in x]
    steps_done = [i for i, x in enumerate(lines) if x.startswith("done  ") and "benchmark" not in x]
    assert min(starts) > max(steps_done)  # timed once every engine was built
    for target, points in (("fp32", {"b1_s16", "b2_s16"}), ("int8", {"b1_s16"}),
                           ("ov", {"b1_s16", "b2_s16"})):
        bench = _bench(tmp_path, target)
        assert bench["engines_in_window"] == 3
        assert set(bench["results"]) == points
        for point in bench["results"].values():
            assert point["reference"]["median_ms"] > 0 and point["rounds"] >= 2
    # unchanged: every result is a hit; one engine changed: only its benchmark runs, alone
    rc, tasks, _ = _build(tmp_path, capsys)
    assert rc == 0 and {tasks[b]["status"] for b in benches} == {"hit"}
    rc, tasks, _ = _build(tmp_path, capsys, per_channel=False)
    assert rc == 0
    assert [b for b in benches if tasks[b]["status"] == "run"] == ["int8/check:benchmark"]
    assert _bench(tmp_path, "int8")["engines_in_window"] == 1


@pytest.mark.slow
def test_an_engine_that_cannot_open_fails_its_own_task_only(
        tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    shutil.copy(FIXTURES / "slow_steps.py", tmp_path / "slow_steps.py")
    rc, tasks, err = _build(tmp_path, capsys, extra=BROKEN)
    assert rc == 2
    assert tasks["broken/check:benchmark"]["status"] == "fail"
    assert "Nope" in tasks["broken/check:benchmark"]["log_tail"]
    for target in ("fp32", "int8", "ov"):
        assert tasks[f"{target}/check:benchmark"]["status"] == "run"
        assert _bench(tmp_path, target)["engines_in_window"] == 3  # timed together all the same
