"""Issue 17, "Gates that know the machine" and "A verdict on the interval, not the point": the
benchmark's gates judged on recorded figures (pure: no timing), per machine class, and the
shipped recipe judged on the figures measured on three CPUs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.host.conditions import Conditional, OnMachine, not_here, thresholds
from orchestrator.steps.benchmark import Benchmark, BenchmarkParams, judge_speedup

REPO = Path(__file__).resolve().parents[1]
AVX2 = ["sse4_2", "avx", "avx2", "fma", "f16c"]  # the 2-core AMD EPYC of December 7
VNNI = [*AVX2, "avx512f", "avx512bw", "avx512vl", "avx512_vnni"]  # an AMD EPYC with AVX-512
AMX = [*VNNI, "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16"]


def point(speedup: float, lo: float, hi: float, noisy: bool = False) -> dict[str, Any]:
    return {"speedup": speedup, "speedup_interval": [lo, hi], "median_ms": 10.0,
            "reference": {"median_ms": 10.0 * speedup}, "noisy": noisy,
            "noise": ["outside load: fed"] if noisy else []}


@pytest.mark.parametrize("p,verdict", [
    (point(2.5, 2.4, 2.6), "passed"),  # the point meets it, quiet
    (point(2.5, 1.5, 3.5, noisy=True), "unjudged"),  # noisy and straddling: undecided
    (point(1.5, 1.2, 1.9, noisy=True), "failed"),  # noisy, but even the upper bound is below
    (point(1.5, 1.2, 1.9), "failed"),  # quiet and below
    (point(1.9, 1.8, 2.1), "failed"),  # quiet, the point below, the interval reaching over
    (point(3.0, 2.5, 3.5, noisy=True), "passed"),  # noisy, its whole interval above
])
def test_min_speedup_is_judged_on_the_interval(p: dict[str, Any], verdict: str) -> None:
    got, why = judge_speedup(Conditional(value=2.0), p, None)
    assert got == verdict, why
    if verdict == "unjudged":
        assert why.startswith("unjudged (noisy): the interval of 2.50x (95% interval 1.50-3.50x) "
                              "straddles min_speedup 2x") and "--rebench" in why
    if p["speedup_interval"][1] < 2.0:
        assert "even the interval's upper bound 1.90x is below it" in why


def metrics(features: list[str] | None, **points: dict[str, Any]) -> dict[str, Any]:
    m: dict[str, Any] = {"results": points, "footprint": {"load_ms": 50.0, "peak_mb": 100.0}}
    if features is not None:
        m["cpu_features"] = features
    return m


def test_a_conditioned_goal_is_not_judged_on_a_machine_without_the_feature() -> None:
    p = BenchmarkParams(min_speedup=[1.0, {"value": 4.0, "when": {"cpu_features": ["avx512_vnni"]}}])
    slow = metrics(AVX2, b1_s128=point(1.71, 1.68, 1.84))
    v = Benchmark.judge(p, slow, None)
    assert v.failures == [] and v.unjudged == []
    rows = v.summary["gates"]
    assert [(r["threshold"], r["verdict"]) for r in rows] == [(1.0, "passed"), (4.0, "not judged here")]
    assert "not judged here: this machine lacks avx512_vnni" in rows[1]["why"]
    assert "1.71x" in rows[1]["why"]  # the figure is still recorded
    assert rows[1]["when"] == {"cpu_features": ["avx512_vnni"]}
    fast = metrics(VNNI, b1_s128=point(1.71, 1.68, 1.84))  # the same figure where VNNI exists
    assert len(Benchmark.judge(p, fast, None).failures) == 1


def test_footprint_gates_take_conditions_too() -> None:
    p = BenchmarkParams(max_load_ms={"value": 10, "when": {"cpu_features": ["amx_int8"]}},
                        max_peak_mb=500)
    assert Benchmark.judge(p, metrics(VNNI), None).failures == []
    [failure] = Benchmark.judge(p, metrics(AMX), None).failures
    assert failure.startswith("load time 50 ms > max_load_ms 10")


def test_an_unknown_feature_name_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ValueError, match="unknown CPU feature 'avx512vnni'; did you mean 'avx512_vnni'"):
        OnMachine(cpu_features=["avx512vnni"])
    with pytest.raises(ValueError):
        BenchmarkParams(min_speedup=[])  # an empty list says nothing
    assert thresholds(2) == [Conditional(value=2.0)]
    assert not_here(Conditional(value=2.0, when=OnMachine(cpu_features=["amx_int8"])), None) \
        == "not judged here: the figure was recorded without its CPU features"


def _edge_gates(recipe: Any, target: str) -> BenchmarkParams:
    [use] = [u for u in recipe.checks[target] if u.info.name == "benchmark"]
    return BenchmarkParams.model_validate(use.params.model_dump())


# speed-ups measured on recipes/bert-edge.yaml (b1 s128, paired, 95% intervals; docs/gates.md)
MEASURED = {
    "avx2": (AVX2, {"edge-int8": point(1.71, 1.68, 1.84), "cpu-int8": point(2.03, 1.98, 2.26)}),
    "vnni": (VNNI, {"edge-int8": point(4.71, 4.59, 4.79), "cpu-int8": point(4.1, 3.9, 4.3)}),
    "amx": (AMX, {"edge-int8": point(5.44, 4.91, 5.56), "cpu-int8": point(2.54, 2.52, 2.65)}),
}


@pytest.mark.parametrize("machine", sorted(MEASURED))
def test_the_shipped_recipe_passes_its_gates_on_each_measured_cpu(machine: str) -> None:
    from orchestrator.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "bert-edge.yaml")
    features, figures = MEASURED[machine]
    for target, p in figures.items():
        v = Benchmark.judge(_edge_gates(recipe, target), metrics(features, b1_s128=p), None)
        assert v.failures == [] and v.unjudged == [], (machine, target, v.failures)
        verdicts = {r["verdict"] for r in v.summary["gates"]}
        assert verdicts <= {"passed", "not judged here"}
    edge = Benchmark.judge(_edge_gates(recipe, "edge-int8"),
                           metrics(features, b1_s128=figures["edge-int8"]), None)
    goal = [r for r in edge.summary["gates"] if "when" in r]
    assert goal and goal[0]["verdict"] == ("not judged here" if machine == "avx2" else "passed")


CPUINFO = "processor\t: 0\nmodel name\t: Fake CPU {name}\nflags\t\t: {flags}\n\n"
GATED = """\
name: gated
model:
  source: ./model
inputs:
  shapes: {{batch: [1], sequence: [8]}}
targets:
  fe:
    steps:
      - export-onnx: {{opset: 17}}
    checks:
      benchmark:
        threads: 1
        warmup: 1
        min_runs: 2
        max_runs: 6
        window: 2
        max_seconds: 2
        min_speedup: [0.01, {{value: {goal}, when: {{cpu_features: [avx512_vnni]}}}}]
"""


@pytest.mark.slow
def test_a_goal_for_another_cpu_is_recorded_not_judged_and_editing_it_measures_nothing(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A real build on a faked AVX2-only machine ($DEPLOY_BUILD_CPUINFO: the CPU facts the tool
    reads): the VNNI goal is not judged (exit 0); on a faked VNNI machine an impossible goal
    fails (exit 2); editing the goal re-judges from the cache."""
    import shutil

    from orchestrator.cli import main

    shutil.copytree(tiny_model_dir, tmp_path / "model")
    for name, flags in (("avx2", AVX2), ("vnni", VNNI)):
        (tmp_path / f"{name}.txt").write_text(CPUINFO.format(name=name, flags=" ".join(flags)))
    recipe = tmp_path / "gated.yaml"
    args = ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "build"), "--json"]

    def build(goal: float, cpu: str) -> tuple[int, dict[str, Any], dict[str, Any]]:
        recipe.write_text(GATED.format(goal=goal))
        monkeypatch.setenv("DEPLOY_BUILD_CPUINFO", str(tmp_path / f"{cpu}.txt"))
        from orchestrator.host import machine

        machine.detect.cache_clear()
        machine.fact.cache_clear()
        capsys.readouterr()
        rc = main([str(recipe), *args])
        out = json.loads(capsys.readouterr().out)
        manifest = json.loads((tmp_path / "build/gated/fe/manifest.json").read_text())
        return rc, out, manifest

    from orchestrator.host import machine

    request_cleanup = [machine.detect.cache_clear, machine.fact.cache_clear]
    try:
        _judged_on_two_cpus(build)
    finally:  # no faked CPU fact outlives the test (the facts are cached per process)
        monkeypatch.delenv("DEPLOY_BUILD_CPUINFO", raising=False)
        for clear in request_cleanup:
            clear()


def _judged_on_two_cpus(build: Any) -> None:
    rc, out, m = build(1000, "avx2")
    assert rc == 0
    assert m["benchmark"]["cpu_features"] == AVX2 and m["benchmark"]["cpu"] == "Fake CPU avx2"
    goal = [g for g in m["benchmark"]["gates"] if "when" in g][0]
    assert goal["verdict"] == "not judged here" and "lacks avx512_vnni" in goal["why"]
    rc, out, m = build(1000, "vnni")  # another CPU: measured again (its key holds the model)
    assert rc == 2 and m["status"] == "failed"
    assert any("speedup" in f and "< 1000x" in f for f in m["failures"])
    bench = [t for t in out["tasks"] if t["label"] == "fe/check:benchmark"][0]
    assert bench["status"] == "run"
    rc, out, m = build(0.02, "vnni")  # the goal edited: judged again, nothing measured
    assert rc == 0 and m["status"] == "ok"
    assert [t["status"] for t in out["tasks"] if t["label"] == "fe/check:benchmark"] == ["hit"]
