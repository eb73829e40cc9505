"""The benchmark's paired speed-up: engine and PyTorch reference alternated in one task, the
interval of their ratio, and the outside-load detector. Timing-free where it can be (fake clocks,
fed figures); the tests on real runtimes assert structure, never speed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES

from orchestrator.step import ModelInfo, StepContext
from orchestrator.steps import benchmark as bm
from orchestrator.steps.benchmark import (
    MIN_ROUNDS,
    Benchmark,
    BenchmarkParams,
    measure_paired,
    measure_point,
    noise_reasons,
    speedup_interval,
)

SIDE = {"median_ms", "p90_ms", "p99_ms", "mean_ms", "throughput", "runs", "stable", "spread"}


def ctx_for(params: Any, tmp_path: Path, **inputs: Path) -> StepContext:
    return StepContext(params=params, inputs=inputs, out_dir=tmp_path, outputs={},
                       hardware={"device": "cpu"}, model=ModelInfo(), threads=1)


@pytest.fixture(scope="module")
def tiny_onnx(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime")
    from test_checks import export_onnx

    return export_onnx(tiny_model_dir, tmp_path_factory.mktemp("bench") / "fe.onnx")


# -- the interval: a pure function of the paired rounds ------------------------------------------

def test_speedup_interval_is_the_median_round_ratio_with_a_deterministic_bootstrap() -> None:
    rounds = [[10.0, 30.0], [10.0, 29.0], [11.0, 33.0], [9.0, 28.0], [10.0, 31.0], [12.0, 30.0]]
    point, lo, hi = speedup_interval(rounds)
    ratios = sorted(r / e for e, r in rounds)
    assert point == pytest.approx((ratios[2] + ratios[3]) / 2)
    assert ratios[0] <= lo <= point <= hi <= ratios[-1]
    assert speedup_interval(rounds) == (point, lo, hi)  # same timings, same interval
    assert speedup_interval([list(r) for r in rounds]) == (point, lo, hi)

    # a constant ratio has no spread, whatever the absolute times (load that slows both alike)
    assert speedup_interval([[1.0, 3.0], [2.0, 6.0], [4.0, 12.0]]) == (3.0, 3.0, 3.0)
    # one round: a point without an interval to speak of
    assert speedup_interval([[5.0, 10.0]]) == (2.0, 2.0, 2.0)
    # rounds that disagree give a wide interval
    p2, lo2, hi2 = speedup_interval([[10.0, 20.0], [10.0, 60.0], [10.0, 25.0], [10.0, 50.0]])
    assert (hi2 - lo2) / p2 > 0.5
    with pytest.raises(ValueError):
        speedup_interval([])


# -- the alternation: a fake clock, so the timings are exact -----------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def engine(self, ms: float, name: str) -> Any:
        def run(feed: dict[str, Any]) -> None:
            self.now += ms / 1000.0
            self.calls.append(name)
        return run


def feed(batch: int = 2) -> dict[str, Any]:
    import numpy as np

    return {"input_ids": np.zeros((batch, 4), dtype=np.int64)}


def test_engine_and_reference_alternate_in_abba_windows() -> None:
    clock = FakeClock()
    p = BenchmarkParams(warmup=2, window=3, min_runs=3, max_runs=60, max_seconds=100)
    r = measure_paired(clock.engine(2.0, "E"), clock.engine(6.0, "R"), feed(), p, clock=clock)
    # warm-up of each, then rounds: E window, R window / R window, E window / ...
    assert clock.calls[:4] == ["E", "E", "R", "R"]
    windows = "".join(clock.calls[4:])[::3]
    assert windows == "ERRE" * (len(windows) // 4) + "ER"[: len(windows) % 4]
    assert len(r["rounds"]) == MIN_ROUNDS  # both sides stable at once: stops after MIN_ROUNDS
    assert r["rounds"] == [[pytest.approx(2.0), pytest.approx(6.0)]] * MIN_ROUNDS
    for side, ms in (("engine", 2.0), ("reference", 6.0)):
        assert set(r[side]) == SIDE
        assert r[side]["median_ms"] == ms and r[side]["stable"] is True
        assert r[side]["runs"] == 3 * MIN_ROUNDS
        assert r[side]["throughput"] == pytest.approx(2000.0 / ms, abs=0.01)
    assert speedup_interval(r["rounds"]) == pytest.approx((3.0, 3.0, 3.0))


def test_a_slow_model_gets_shorter_windows_not_a_single_round() -> None:
    clock = FakeClock()
    # one run of each takes 1.5 s: ten-run windows would leave one round in 20 s
    p = BenchmarkParams(warmup=1, window=10, min_runs=20, max_runs=200, max_seconds=20)
    r = measure_paired(clock.engine(500.0, "E"), clock.engine(1000.0, "R"), feed(1), p,
                       clock=clock)
    assert len(r["rounds"]) >= MIN_ROUNDS
    assert clock.now <= p.max_seconds + 1.5 * 10  # at most one round past the limit


def test_max_runs_bounds_each_side() -> None:
    clock = FakeClock()
    p = BenchmarkParams(warmup=0, window=4, min_runs=4, max_runs=6, stability=1e-9,
                        max_seconds=100)

    def jittery(ms: list[float], name: str) -> Any:
        def run(feed: dict[str, Any]) -> None:
            clock.now += ms[len(clock.calls) % len(ms)] / 1000.0
            clock.calls.append(name)
        return run

    r = measure_paired(jittery([1.0, 2.0, 3.0], "E"), jittery([5.0, 7.0], "R"), feed(), p,
                       clock=clock)
    assert r["engine"]["runs"] == r["reference"]["runs"] == 6
    assert len(r["rounds"]) == 2 and r["engine"]["stable"] is False


# -- the noise detector: fed figures, deterministic --------------------------------------------

def test_noise_reasons_from_fed_figures() -> None:
    quiet = dict(cpus=2, threads=2, outside=(0.05, 0.03), loadavg=2.1,
                 calibration_ms=(20.0, 21.0), speedup=3.0, interval=(2.9, 3.1))
    assert noise_reasons(**quiet) == []

    def reasons(**change: Any) -> list[str]:
        return noise_reasons(**{**quiet, **change})

    [r] = reasons(outside=(1.3, 0.03))
    assert r.startswith("outside load: other processes kept 1.30 of 2 CPUs busy")
    assert reasons(outside=(0.27, 0.03)) == []  # within the measurement's own uncertainty
    # spare CPUs absorb outside work: 8 CPUs, 2 benchmark threads, 4 CPUs of other work
    assert reasons(cpus=8, outside=(4.0, 0.05)) == []
    assert reasons(cpus=8, outside=(6.5, 0.05))[0].startswith("outside load")
    [r] = reasons(calibration_ms=(20.0, 31.0))
    assert r.startswith("calibration drift: a fixed loop took 20.0 ms before and 31.0 ms after")
    [r] = reasons(interval=(2.2, 4.1))
    assert r.startswith("ratio spread: the 95% interval 2.20-4.10x")
    assert reasons(interval=None) == []  # one round: no interval to judge
    # without /proc/stat the load average stands in (it includes the benchmark's own threads)
    assert reasons(outside=None, loadavg=2.5) == []
    assert reasons(outside=None, loadavg=3.5)[0].startswith("load average 3.50 on 2 CPUs")
    assert len(reasons(outside=(1.9, 0.0), calibration_ms=(10.0, 20.0), interval=(1, 5))) == 3


def test_a_noisy_window_is_measured_once_more_then_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    def run(feed: dict[str, Any]) -> None:
        time.sleep(0.0005)

    p = BenchmarkParams(warmup=0, window=2, min_runs=2, max_runs=6, max_seconds=1)
    verdicts = [["calibration drift: fed"], []]
    monkeypatch.setattr(bm, "noise_reasons", lambda **kw: verdicts.pop(0))
    logged: list[str] = []
    r = measure_point(run, run, feed(), p, log=logged.append)
    assert r["attempts"] == 2 and r["noisy"] is False and r["noise"] == []
    assert r["first_attempt_noise"] == ["calibration drift: fed"]
    assert logged and "measuring once more" in logged[0]

    monkeypatch.setattr(bm, "noise_reasons", lambda **kw: ["outside load: fed"])
    r = measure_point(run, run, feed(), p, log=logged.append)
    assert r["attempts"] == 2 and r["noisy"] is True and r["noise"] == ["outside load: fed"]
    assert {"cpus", "outside_cpus", "loadavg_1m", "calibration_ms"} == set(r["load"])


# -- the check on real runtimes (tiny model, ONNX Runtime vs PyTorch) ---------------------------

def test_the_benchmark_task_measures_the_reference_itself(tiny_onnx: Path, tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    p = BenchmarkParams(batch=[1, 2], sequence=[8], threads=1, warmup=1, min_runs=4,
                        max_runs=16, window=4, max_seconds=2)
    m = Benchmark().run(ctx_for(p, tmp_path, model=tiny_onnx, source=tiny_model_dir))
    assert m["runtime"]["runtime"] == "onnxruntime"
    assert m["reference_runtime"]["runtime"] == "pytorch" and m["reference_runtime"]["threads"] == 1
    assert set(m["results"]) == {"b1_s8", "b2_s8"} and "paired" not in m
    for key, point in m["results"].items():
        assert set(point["reference"]) == SIDE and point["reference"]["median_ms"] > 0
        assert point["runs"] == point["reference"]["runs"]
        assert point["speedup"] == m["speedup"][key] > 0
        assert point["rounds"] >= 1 and point["attempts"] in (1, 2)
        if point["rounds"] >= 2:
            lo, hi = point["speedup_interval"]
            assert lo <= point["speedup"] <= hi
        # quiet or not depends on this shared machine: only the shape of the answer is asserted
        assert isinstance(point["noisy"], bool) and isinstance(point["noise"], list)
        assert point["noisy"] == bool(point["noise"]) == (key in m["noise"])
    assert m["noisy"] == bool(m["noise"])


def test_a_noisy_result_is_kept_marked_and_warned(tiny_onnx: Path, tiny_model_dir: Path,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bm, "noise_reasons", lambda **kw: ["outside load: fed"])
    p = BenchmarkParams(batch=[1], sequence=[8], threads=1, warmup=0, min_runs=2, max_runs=4,
                        window=2, max_seconds=1, min_speedup=1000)
    ctx = ctx_for(p, tmp_path, model=tiny_onnx, source=tiny_model_dir)
    m = Benchmark().run(ctx)
    assert m["noisy"] is True and m["noise"] == {"b1_s8": ["outside load: fed"]}
    assert m["results"]["b1_s8"]["attempts"] == 2 and m["results"]["b1_s8"]["median_ms"] > 0
    [warning] = ctx.warnings
    assert warning.startswith("b1_s8: noisy machine, measured twice and still noisy "
                              "(outside load: fed); speed-up ")
    assert "--rebench" in warning
    [problem] = Benchmark.judge(p, m, None).failures
    assert "upper bound" in problem and "measured on a noisy machine: outside load: fed" in problem


HOG = """\
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
print("pinned", flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    pass
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or not Path("/proc/stat").is_file(),
                    reason="needs Linux CPU affinity and /proc/stat")
def test_a_cpu_hog_on_the_benchmarks_cpu_makes_it_noisy(tiny_onnx: Path, tiny_model_dir: Path,
                                                       tmp_path: Path) -> None:
    """Two busy loops pinned to the one CPU the benchmark runs on: whatever else this machine is
    doing, they take a large share of that CPU for the whole measurement, so the outside-load
    rule must see them on both attempts (the result is kept, marked)."""
    cpu = min(os.sched_getaffinity(0))
    saved = os.sched_getaffinity(0)
    hogs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(2):
            hogs.append(subprocess.Popen([sys.executable, "-c", HOG, str(cpu), "60"],
                                         stdout=subprocess.PIPE, text=True))
        for h in hogs:
            assert h.stdout is not None and h.stdout.readline().strip() == "pinned"
        os.sched_setaffinity(0, {cpu})  # this thread; threads=1 keeps ORT and torch on it
        p = BenchmarkParams(batch=[1], sequence=[8], threads=1, warmup=1, min_runs=10_000,
                            max_runs=10_000, window=5, max_seconds=0.8)
        ctx = ctx_for(p, tmp_path, model=tiny_onnx, source=tiny_model_dir)
        m = Benchmark().run(ctx)
        assert all(h.poll() is None for h in hogs)  # they ran through the whole measurement
    finally:
        os.sched_setaffinity(0, saved)
        for h in hogs:
            h.kill()
            h.wait()
    point = m["results"]["b1_s8"]
    assert point["attempts"] == 2 and point["noisy"] is True and m["noisy"] is True
    assert any(r.startswith("outside load") for r in point["noise"]), point["noise"]
    assert any(r.startswith("outside load") for r in point["first_attempt_noise"])
    assert point["load"]["cpus"] == 1 and point["load"]["outside_cpus"] > 0.25
    assert point["reference"]["median_ms"] > 0 and point["speedup"] > 0  # kept, not withheld
    assert ctx.warnings and "noisy machine" in ctx.warnings[0]


# -- the graph and the key --------------------------------------------------------------------

def test_no_separate_reference_task_and_the_key_holds_both_toolchains(tmp_path: Path) -> None:
    from orchestrator.plan import document
    from orchestrator.plan.graph import compile_graph
    from orchestrator.recipe import load_recipe

    shutil.copy(FIXTURES / "fake_steps.py", tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "r.yaml").write_text(
        "plugins: [fake_steps.py]\nmodel: {source: ./model}\ntargets:\n"
        "  a:\n    steps: [{export-onnx: {}}]\n    checks: {parity: {}, benchmark: {}}\n"
        "  b:\n    steps: [{export-onnx: {}}, {ort-quantize: {}}]\n"
        "    checks: {parity: {}, benchmark: {}}\n")
    graph = compile_graph([load_recipe(tmp_path / "r.yaml")])
    tasks = graph.tasks()
    assert Benchmark.reference is None
    assert not [t for t in tasks if t.step == "benchmark" and t.reference]
    assert len([t for t in tasks if t.step == "parity" and t.reference]) == 1  # untouched
    benches = [t for t in tasks if t.step == "benchmark"]
    assert len(benches) == 2
    for task in benches:
        assert task.inputs["source"][0] == "src:r:model"
        doc = document(task, {"model": "m", "source": "s"})
        assert set(doc["toolchain"]) == {"onnxruntime", "torch", "transformers"}
        assert doc["version"] == Benchmark.version != "1" and "role" not in doc
    for tp in graph.targets:
        assert tp.checks["benchmark"].reference is None and tp.checks["parity"].reference is not None
