"""benchmark: latency of the engine and its speed-up over PyTorch, measured in one task.

The task opens both the engine and the PyTorch reference (the untouched model source). Each grid
point runs ``warmup`` iterations of each, then *rounds*: a window of ``window`` engine runs and a
window of ``window`` reference runs, in alternating order (engine first, then reference first,
...), so both see the same machine state. It stops once both sides' last two window medians agree
within ``stability`` (at least ``min_runs`` per side and ``MIN_ROUNDS`` rounds), or at ``max_runs``
per side or ``max_seconds`` (checked after each round). The speed-up is the median of the
per-round ratios (reference median / engine median) with a 95% bootstrap interval over the rounds
(fixed seed: the same timings give the same interval).

One window for many engines (`run_group`, `measure_robin`): the benchmarks of one model source
that are ready together (the scheduler starts them once every engine of the build is built) run
in one worker; each grid point times every engine that has it and one PyTorch reference in
round-robin windows (the order rotating round by round), so PyTorch is measured once for all of
them and their speed-ups come from the same stretch of time. An engine leaves the window once it
is stable; each result is still cached under its own task's key.

Outside load is watched around each point: the CPU time other processes took on this process's
CPUs (``/proc/stat`` against our own CPU time; the load average where there is no ``/proc/stat``),
a fixed calibration loop timed before and after, and the width of the interval. A noisy point is
measured once more; if it is still noisy it is kept, marked ``noisy`` with the reasons, and the
task warns: marked, not withheld (``--rebench`` re-measures).

Gates are judged on the interval, not the point (`judge_speedup`): a point fails when even its
interval's upper bound is below the threshold, passes when it meets it and is not noisy, and is
``unjudged`` (a warning; a failure under ``--strict``) only when a noisy interval straddles it.
A threshold may be for some machines only (orchestrator.host.conditions): it is judged against the CPU
features recorded with the figures.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.host.conditions import Conditional, GateValue, describe, not_here, thresholds
from orchestrator.host.cpu import cpu_features, cpu_model
from orchestrator.step import PlanContext, Planned, Resources, StepContext, Verdict
from orchestrator.steps.checks import EngineCheck, device_of

Positive = Annotated[int, Field(ge=1)]

MIN_ROUNDS = 3  # rounds before a point may stop as stable: an interval needs a few ratios
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
# Noise rules (see noise_reasons). A point is noisy when any one holds.
OUTSIDE_LOAD = 0.25  # CPUs kept busy by other processes beyond the spare ones (cpus - threads)
LOADAVG_MARGIN = 1.0  # without /proc/stat: load average minus our threads beyond the spare CPUs
CALIBRATION_DRIFT = 0.20  # the calibration loop's time before vs after the window
RATIO_SPREAD = 0.20  # width of the speed-up's interval relative to the speed-up
CALIBRATION_LOOP = 250_000  # iterations of the pure-Python calibration loop (~10-20 ms)
METHOD = (f"engines and one PyTorch reference alternate in round-robin windows within one task "
          f"(ABBA rounds for one engine; the engines of one model source whose benchmarks are "
          f"ready together share the window); "
          f"speedup = median over rounds of reference/engine window medians; interval = "
          f"{CONFIDENCE:.0%} percentile bootstrap over rounds ({BOOTSTRAP_RESAMPLES} resamples, "
          f"seed {BOOTSTRAP_SEED}); min_speedup fails when the interval's upper bound is below it, "
          "passes when the point meets it unless the point is noisy, and a noisy interval that "
          "straddles it is unjudged")


class BenchmarkParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch: list[Positive] | None = Field(None, min_length=1, description="Batch sizes of the "
                                         "grid (default: the recipe's inputs.shapes.batch).")
    sequence: list[Positive] | None = Field(None, min_length=1, description="Sequence lengths of "
                                            "the grid (default: the recipe's inputs.shapes.sequence).")
    threads: int = Field(2, ge=1, description="Intra-op threads of the engine and of PyTorch.")
    warmup: int = Field(5, ge=0, description="Untimed runs of each before measuring a grid point.")
    min_runs: int = Field(20, ge=1, description="Timed runs of each before a point may count as "
                          "stable.")
    max_runs: int = Field(200, ge=1, description="Most timed runs of each per grid point.")
    window: int = Field(10, ge=1, description="Runs per window; the engine and the reference "
                        "alternate window by window, and window medians are compared.")
    stability: float = Field(0.05, gt=0, description="Consecutive window medians must agree "
                             "within this fraction (engine and reference each).")
    max_seconds: float = Field(20.0, gt=0, description="Time limit per grid point and attempt "
                               "(both runtimes and warm-up included; checked after each round).")
    precision_hint: Literal["f32", "bf16", "f16"] = Field(
        "f32", description="OpenVINO INFERENCE_PRECISION_HINT.")
    profile: bool = Field(False, description="ONNX Runtime engines: record the 5 operator types "
                          "that take the most time (profiled in a separate session).")
    min_speedup: GateValue | None = Field(
        None, description="Gate: every grid point is at least this much faster than the PyTorch "
        "reference (the paired speed-up, judged on its interval). A number, {value, when: "
        "{cpu_features: [...]}} for some machines only, or a list of both (a floor anywhere, a "
        "goal where the CPU has the features).")
    max_load_ms: GateValue | None = Field(
        None, description="Gate: opening the engine (its runtime already imported) takes at most "
        "this many ms (a number, or conditioned like min_speedup).")
    max_peak_mb: GateValue | None = Field(
        None, description="Gate: the engine adds at most this many MB (2^20 bytes) of resident "
        "memory at its peak while it loads and runs each grid point once (a number, or "
        "conditioned like min_speedup).")

    @model_validator(mode="after")
    def _runs(self) -> BenchmarkParams:
        if self.min_runs > self.max_runs:
            raise ValueError(f"min_runs ({self.min_runs}) is more than max_runs ({self.max_runs})")
        return self


class Benchmark(EngineCheck[BenchmarkParams]):
    name = "benchmark"
    version = "4"  # 3: the engine's load time and peak memory (footprint); 4: CPU features
    description = ("Median/p90/p99 latency and throughput over a batch x sequence grid, and the "
                   "speed-up over PyTorch measured alternately in the same task.")
    inputs = ("model", "source")
    resources = Resources(cpu=64)  # clamped to all the executor's cpus: its threads
    exclusive = True  # it runs alone: nothing of this build or another runs beside it
    measures_speed = True  # --rebench measures it again
    manifest_section = "benchmark"  # the manifest's top-level benchmark section
    gate_fields = ("min_speedup", "max_load_ms", "max_peak_mb")
    machine_keys = ("cpu_model", "cpu_count")  # latency from another machine is not this one's
    # No separate reference task: the PyTorch reference is measured inside this task, alternated
    # with the engine (a ratio of figures measured minutes apart is not a measurement).
    reference = None

    @classmethod
    def plan(cls, params: BenchmarkParams, at: PlanContext) -> Planned[BenchmarkParams]:
        """An unset grid is the recipe's inputs.shapes; both runtimes measured here are keyed:
        the engine's, and torch + transformers for PyTorch."""
        planned = super().plan(params, at)
        grid = params.model_copy(update={
            "batch": params.batch or at.shapes.get("batch") or [1],
            "sequence": params.sequence or at.shapes.get("sequence") or [128]})
        return cls.planned(grid, resources=planned.resources,
                           toolchain=tuple(sorted({*planned.toolchain, "torch", "transformers"})))

    def run(self, ctx: StepContext[BenchmarkParams]) -> dict[str, Any]:
        [result] = self.run_group([ctx])
        if isinstance(result, BaseException):
            raise result
        return result

    @classmethod
    def group_key(cls, params: BenchmarkParams) -> tuple[Any, ...]:
        """Benchmarks of one model source with these equal may share one window and one PyTorch
        reference (`run_group`): the same threads and timing rules."""
        return (params.threads, params.warmup, params.min_runs, params.max_runs, params.window,
                params.stability, params.max_seconds)

    def run_group(self, ctxs: Sequence[StepContext[BenchmarkParams]]
                  ) -> list[dict[str, Any] | BaseException]:
        """Several engines of one model source, each with its own task and params, timed
        together: each grid point runs every engine that has it and one PyTorch reference in
        round-robin windows (`measure_points`), so the reference is measured once for all and
        their speed-ups come from the same stretch of time. An engine that cannot be opened fails
        its own task only. One metrics dict (or the exception) per context, in order."""
        from orchestrator.runtime.engines import open_engine

        first = ctxs[0]
        source, trc, p0 = first.input("source"), first.model.trust_remote_code, first.params
        device, vocab = device_of(first.hardware), _vocab_size(source)
        out: list[dict[str, Any] | BaseException] = []
        engines: dict[int, tuple[Any, dict[str, Any], list[tuple[int, int]]]] = {}
        for i, ctx in enumerate(ctxs):  # each engine alone in the process beside its runtime
            try:
                engines[i] = _open_measured(ctx, vocab)
                out.append({})
            except Exception as e:  # noqa: BLE001 - this engine's task fails, not the others'
                out.append(e)
        if not engines:
            return out
        reference = open_engine(source, p0.threads, task=first.model.task, trust_remote_code=trc,
                                device=device)
        if reference.runtime != "pytorch":
            raise ValueError(f"the benchmark's reference is the model source run by PyTorch; "
                             f"{source} opens as {reference.runtime}")
        results: dict[int, dict[str, Any]] = {i: {} for i in engines}
        for b, s in sorted({pt for _, _, grid in engines.values() for pt in grid}):
            here = [i for i, (_, _, grid) in engines.items() if (b, s) in grid]
            names = ", ".join(engines[i][0].runtime for i in here)
            first.log(f"benchmark {names} vs pytorch batch {b} sequence {s}")
            points = measure_points([engines[i][0].run for i in here], reference.run,
                                    synthetic(b, s, vocab), p0, log=first.log)
            for i, point in zip(here, points, strict=True):
                results[i][point_key(b, s)] = point
        for i, (engine, footprint, grid) in engines.items():
            out[i] = _metrics(ctxs[i], engine, reference, footprint, results[i], grid, vocab,
                              len(engines))
        return out

    @classmethod
    def judge(cls, params: BenchmarkParams, metrics: dict[str, Any],
              reference: dict[str, Any] | None) -> Verdict:
        """The metrics as measured (the reference figures come from the same task), gated on the
        intervals, each threshold on the machines it is for."""
        summary = {**metrics, "results": {k: dict(v) for k, v in metrics["results"].items()}}
        rows = gate_rows(params, metrics)
        if rows:
            summary["gates"] = rows
        return Verdict(summary, [r["why"] for r in rows if r["verdict"] == "failed"],
                       [r["why"] for r in rows if r["verdict"] == "unjudged"])

    @classmethod
    def failures(cls, params: BenchmarkParams, metrics: dict[str, Any]) -> list[str]:
        return [r["why"] for r in gate_rows(params, metrics) if r["verdict"] == "failed"]


def _open_measured(ctx: StepContext[BenchmarkParams], vocab: int
                   ) -> tuple[Any, dict[str, Any], list[tuple[int, int]]]:
    """The engine of a benchmark task, opened with its load time and memory measured; its
    grid."""
    from orchestrator.runtime.engines import engine_kind, open_engine
    from orchestrator.runtime.footprint import measure_open

    p: BenchmarkParams = ctx.params
    model, trc = ctx.input("model"), ctx.model.trust_remote_code
    grid = [(b, s) for b in p.batch or [1] for s in p.sequence or [128]]
    engine, footprint = measure_open(
        engine_kind(model), lambda: open_engine(model, p.threads, p.precision_hint,
                                                task=ctx.model.task, trust_remote_code=trc,
                                                device=device_of(ctx.hardware)),
        [synthetic(b, s, vocab) for b, s in grid])
    return engine, footprint, grid


def _metrics(ctx: StepContext[BenchmarkParams], engine: Any, reference: Any,
             footprint: dict[str, Any], results: dict[str, Any], grid: list[tuple[int, int]],
             vocab: int, together: int) -> dict[str, Any]:
    """What one benchmark task records: its points, the noise, the machine, the footprint."""
    from orchestrator.runtime.engines import detect_precision

    p: BenchmarkParams = ctx.params
    noise = {k: v["noise"] for k, v in results.items() if v["noisy"]}
    for key in noise:
        ctx.warn(f"{key}: noisy machine, measured twice and still noisy "
                 f"({'; '.join(noise[key])}); speed-up {_with_interval(results[key])} may be "
                 "off: re-measure with --rebench on a quiet machine")
    metrics: dict[str, Any] = {
        "results": results,
        "speedup": {k: v["speedup"] for k, v in results.items()},
        "noisy": bool(noise),
        "noise": noise,
        "method": METHOD,
        "engines_in_window": together,
        "threads": p.threads,
        "precision_hint": p.precision_hint,
        "precision": detect_precision(ctx.input("model")),
        "runtime": engine.describe(),
        "reference_runtime": reference.describe(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_features": cpu_features(),
        "footprint": footprint,
    }
    if p.profile and engine.runtime == "onnxruntime":
        metrics["profile"] = _profile(ctx, grid, vocab)
    elif p.profile:
        ctx.warn(f"profile: only ONNX Runtime engines can be profiled, not {engine.runtime}")
    return metrics


def recorded_features(metrics: dict[str, Any]) -> list[str] | None:
    """The CPU features of the machine that measured (None: an old record without them)."""
    features = metrics.get("cpu_features")
    return [str(f) for f in features] if isinstance(features, list) else None


def gate_rows(params: BenchmarkParams, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Every threshold of every gate, per grid point where it has one: {gate, threshold, on,
    point, verdict (passed | failed | unjudged | not judged here), why}."""
    features = recorded_features(metrics)
    rows: list[dict[str, Any]] = []
    for t in thresholds(params.min_speedup):
        for key, point in sorted(metrics.get("results", {}).items()):
            verdict, why = judge_speedup(t, point, not_here(t, features))
            rows.append(_row("min_speedup", t, key, verdict, f"{key}: {why}"))
    footprint = metrics.get("footprint") or {}
    for gate, metric, unit, label in (("max_load_ms", "load_ms", "ms", "load time"),
                                      ("max_peak_mb", "peak_mb", "MB", "peak memory")):
        for t in thresholds(getattr(params, gate)):
            verdict, why = _judge_at_most(t, footprint.get(metric), gate, unit, label,
                                          not_here(t, features))
            rows.append(_row(gate, t, None, verdict, why))
    return rows


def _row(gate: str, t: Conditional, point: str | None, verdict: str, why: str) -> dict[str, Any]:
    row: dict[str, Any] = {"gate": gate, "threshold": t.value, "verdict": verdict, "why": why}
    if t.when is not None:
        row["when"] = t.when.model_dump(mode="json")
    if point is not None:
        row["point"] = point
    return row


def judge_speedup(t: Conditional, point: dict[str, Any], elsewhere: str | None
                  ) -> tuple[str, str]:
    """(verdict, why) of one grid point against one min_speedup threshold, on its interval: fail
    when even the upper bound is below it (noisy or not); pass when the point meets it and is
    not noisy (or a noisy interval lies wholly above it); unjudged when a noisy interval
    straddles it; else (a quiet point below it) fail."""
    need, got = t.value, point.get("speedup")
    ref = point.get("reference") or {}
    if got is None or not ref.get("median_ms"):
        return ("not judged here", elsewhere) if elsewhere else (
            "failed", "no reference measurement to compare with")
    measured = (f"{_with_interval(point)}; {point.get('median_ms')} ms vs PyTorch "
                f"{ref['median_ms']} ms alternated in one window")
    if elsewhere:
        return "not judged here", f"min_speedup {describe(t)}: {elsewhere} (measured {measured})"
    interval = point.get("speedup_interval") or [got, got]
    lo, hi = float(interval[0]), float(interval[1])
    noisy = bool(point.get("noisy"))
    noise = f"; measured on a noisy machine: {'; '.join(point.get('noise', []))}" if noisy else ""
    if hi < need:
        return "failed", (f"speedup {got:.2f}x < {need:g}x: even the interval's upper bound "
                          f"{hi:.2f}x is below it ({measured}){noise}")
    if got >= need and not noisy:
        return "passed", f"speedup {got:.2f}x >= {need:g}x ({measured})"
    if noisy and lo >= need:
        return "passed", f"speedup {got:.2f}x >= {need:g}x, its whole interval too ({measured})"
    if noisy:
        return "unjudged", (f"unjudged (noisy): the interval of {_with_interval(point)} straddles "
                            f"min_speedup {need:g}x{noise}; re-measure with --rebench on a "
                            "quieter machine")
    return "failed", (f"speedup {got:.2f}x < {need:g}x (short by {need - got:.2f}x; "
                      f"{measured})")


def _judge_at_most(t: Conditional, got: Any, gate: str, unit: str, label: str,
                   elsewhere: str | None) -> tuple[str, str]:
    """max_load_ms and max_peak_mb against what opening the engine cost."""
    if elsewhere:
        measured = f"{got:g} {unit}" if isinstance(got, int | float) else "not measured"
        return "not judged here", f"{gate} {describe(t)}: {elsewhere} ({label} {measured})"
    if got is None:
        return "failed", (f"{label}: not measured on this machine; drop {gate} or measure "
                          "where /proc is available")
    if got > t.value:
        return "failed", (f"{label} {got:g} {unit} > {gate} {t.value:g} (over by "
                          f"{got - t.value:.1f} {unit})")
    return "passed", f"{label} {got:g} {unit} <= {gate} {t.value:g}"


def _profile(ctx: StepContext[BenchmarkParams], grid: list[tuple[int, int]],
             vocab: int) -> dict[str, Any]:
    """The top ONNX Runtime operators per grid point, profiled in a separate session."""
    from orchestrator.runtime.engines import open_engine

    p, out = ctx.params, {}
    for b, s in grid:
        with tempfile.TemporaryDirectory(prefix="ort-profile-") as tmp:
            prof = open_engine(ctx.input("model"), p.threads, profile_dir=Path(tmp),
                               task=ctx.model.task, trust_remote_code=ctx.model.trust_remote_code)
            feed = synthetic(b, s, vocab)
            runs = p.warmup + p.window
            for _ in range(runs):
                prof.run(feed)
            path = prof.end_profiling()
            out[point_key(b, s)] = top_ops(Path(str(path)), runs)
    return out


def _with_interval(point: dict[str, Any]) -> str:
    interval = point.get("speedup_interval")
    if not interval:
        return f"{point['speedup']:.2f}x (one round: no interval)"
    return f"{point['speedup']:.2f}x (95% interval {interval[0]:.2f}-{interval[1]:.2f}x)"


def point_key(batch: int, sequence: int) -> str:
    return f"b{batch}_s{sequence}"


def synthetic(batch: int, sequence: int, vocab: int) -> dict[str, Any]:
    """Random token ids (fixed seed) with a full attention mask."""
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(1, max(2, vocab), size=(batch, sequence), dtype=np.int64)
    ones = np.ones((batch, sequence), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": ones, "token_type_ids": np.zeros_like(ones)}


def measure(run: Callable[[dict[str, Any]], Any], feed: dict[str, Any],
            p: BenchmarkParams, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """One engine alone, with the same windows and stabilization rule (no reference)."""
    import numpy as np

    start = clock()

    def over() -> bool:
        return clock() - start >= p.max_seconds

    for _ in range(p.warmup):
        run(feed)
    times: list[float] = []
    medians: list[float] = []
    stable = False
    spread: float | None = None
    while len(times) < p.max_runs:
        window: list[float] = []
        while len(window) < p.window and len(times) + len(window) < p.max_runs:
            t0 = clock()
            run(feed)
            window.append((clock() - t0) * 1000.0)
            if over():
                break
        times += window
        if len(window) == p.window:
            medians.append(float(np.median(window)))
        if len(medians) >= 2:
            spread = abs(medians[-1] - medians[-2]) / min(medians[-2:])
            if spread <= p.stability and len(times) >= p.min_runs:
                stable = True
                break
        if over():
            break
    return run_stats(times, int(feed["input_ids"].shape[0]), stable, spread)


def run_stats(times: Sequence[float], batch: int, stable: bool,
              spread: float | None) -> dict[str, Any]:
    """The figures recorded for one engine at one grid point (times in ms)."""
    import numpy as np

    ms = np.asarray(times, dtype=float)
    median = float(np.median(ms))
    return {
        "median_ms": round(median, 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "throughput": round(batch * 1000.0 / median, 2),
        "runs": len(ms),
        "stable": stable,
        "spread": None if spread is None else round(spread, 4),
    }


class _Side:
    """One of the two engines of a paired measurement: its timed runs and window medians."""

    def __init__(self, run: Callable[[dict[str, Any]], Any], clock: Callable[[], float]) -> None:
        self.run, self.clock = run, clock
        self.times: list[float] = []
        self.medians: list[float] = []  # of windows that ran all their planned runs
        self.last: list[float] = []  # the last window's runs

    def warm(self, feed: dict[str, Any], runs: int) -> float | None:
        """Untimed warm-up runs; their mean duration in seconds (None without any)."""
        t0 = self.clock()
        for _ in range(runs):
            self.run(feed)
        return (self.clock() - t0) / runs if runs else None

    def window(self, feed: dict[str, Any], size: int, p: BenchmarkParams) -> float:
        """Run one window of ``size`` runs (clipped by max_runs); its median in ms."""
        import numpy as np

        runs: list[float] = []
        while len(runs) < size and len(self.times) + len(runs) < p.max_runs:
            t0 = self.clock()
            self.run(feed)
            runs.append((self.clock() - t0) * 1000.0)
        self.times += runs
        self.last = runs
        median = float(np.median(runs))
        if len(runs) == size:
            self.medians.append(median)
        return median

    @property
    def spread(self) -> float | None:
        if len(self.medians) < 2:
            return None
        return abs(self.medians[-1] - self.medians[-2]) / min(self.medians[-2:])

    def stable(self, p: BenchmarkParams) -> bool:
        spread = self.spread
        return spread is not None and spread <= p.stability and len(self.times) >= p.min_runs

    def full(self, p: BenchmarkParams) -> bool:
        return len(self.times) >= p.max_runs


def measure_paired(engine: Callable[[dict[str, Any]], Any],
                   reference: Callable[[dict[str, Any]], Any], feed: dict[str, Any],
                   p: BenchmarkParams,
                   clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """One engine against the reference: `measure_robin` with one engine (ABBA rounds).
    Returns each side's figures and the per-round window medians [engine ms, reference ms]."""
    r = measure_robin([engine], reference, feed, p, clock)
    return {"engine": r["engines"][0], "reference": r["reference"], "rounds": r["rounds"][0]}


def measure_robin(engines: Sequence[Callable[[dict[str, Any]], Any]],
                  reference: Callable[[dict[str, Any]], Any], feed: dict[str, Any],
                  p: BenchmarkParams,
                  clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Time several engines and one reference in round-robin windows within one stretch of
    time: each round runs one window of every engine still measured and one of the reference,
    the order rotating round by round (with one engine: E R / R E, ABBA), so every engine is
    paired with reference windows taken moments apart. An engine stops being measured once it
    and the reference are stable (``MIN_ROUNDS`` rounds at least) or at ``max_runs``; the
    reference runs while any engine does. Time limit: ``max_seconds`` per engine. A window has
    ``p.window`` runs, fewer where that would leave no time for ``MIN_ROUNDS`` rounds.
    Returns each engine's figures, the reference's, and per engine its rounds [engine ms,
    reference ms]."""
    start = clock()
    limit = p.max_seconds * max(1, len(engines))
    sides = [_Side(run, clock) for run in engines]
    ref = _Side(reference, clock)
    warm = [side.warm(feed, p.warmup) for side in [*sides, ref]]
    # seconds for one run of each side (None before anything ran: the first window is full size)
    cycle_s: float | None = None if None in warm else sum(w for w in warm if w is not None)
    rounds: list[list[list[float]]] = [[] for _ in sides]
    active = list(range(len(sides)))
    n = 0
    while active:
        size = p.window
        if cycle_s:
            left = limit - (clock() - start)
            todo = max(1, MIN_ROUNDS - min(len(rounds[i]) for i in active))
            size = max(1, min(size, int(left / todo / cycle_s)))
        order: list[_Side] = [*(sides[i] for i in active), ref]
        shift = n % len(order)
        medians = {id(side): side.window(feed, size, p) for side in order[shift:] + order[:shift]}
        for i in active:
            rounds[i].append([medians[id(sides[i])], medians[id(ref)]])
        cycle_s = sum(sum(s.last) / len(s.last) for s in order) / 1000.0
        n += 1
        active = [i for i in active if not (sides[i].full(p) or (
            sides[i].stable(p) and ref.stable(p) and len(rounds[i]) >= MIN_ROUNDS))]
        if ref.full(p) or clock() - start >= limit:
            break
    batch = int(feed["input_ids"].shape[0])
    return {
        "engines": [run_stats(s.times, batch, s.stable(p), s.spread) for s in sides],
        "reference": run_stats(ref.times, batch, ref.stable(p), ref.spread),
        "rounds": rounds,
    }


def speedup_interval(rounds: Sequence[Sequence[float]], confidence: float = CONFIDENCE,
                     resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(speed-up, low, high) from paired rounds [engine ms, reference ms]: the median of the
    per-round ratios and a percentile bootstrap interval of that median over the rounds. Pure and
    deterministic: the same rounds give the same interval."""
    import numpy as np

    if not rounds:
        raise ValueError("no rounds to compute a speed-up from")
    ratios = np.asarray([r / e for e, r in rounds], dtype=float)
    point = float(np.median(ratios))
    if len(ratios) < 2:
        return point, point, point
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ratios), size=(resamples, len(ratios)))
    medians = np.median(ratios[picks], axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(medians, [tail, 100.0 - tail])
    return point, float(min(lo, point)), float(max(hi, point))


def calibrate(repeats: int = 3, loop: int = CALIBRATION_LOOP) -> float:
    """Milliseconds of a fixed pure-Python loop, best of ``repeats``: one core's speed right now."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        acc = 0
        for i in range(loop):
            acc += i * i
        best = min(best, (time.perf_counter() - t0) * 1000.0)
    return best


def _allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _busy_seconds(cpus: list[int]) -> float | None:
    """Non-idle CPU seconds of these CPUs since boot, all processes (None: no /proc/stat)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        hz = float(os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, AttributeError):
        return None
    wanted = {f"cpu{c}" for c in cpus}
    busy, seen = 0, 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            # user nice system idle iowait irq softirq steal (guest time is inside user)
            v = [int(x) for x in fields[1:9]] + [0] * max(0, 9 - len(fields))
            busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
            seen += 1
    return busy / hz if seen == len(wanted) else None


@dataclass
class LoadProbe:
    """CPU time that other processes took on this process's CPUs over a stretch of time: busy time
    of those CPUs (/proc/stat, in clock ticks) minus this process's own CPU time, all threads."""

    cpus: list[int]
    wall: float
    busy: float | None
    own: float

    @classmethod
    def start(cls) -> LoadProbe:
        cpus = _allowed_cpus()
        return cls(cpus, time.perf_counter(), _busy_seconds(cpus), time.process_time())

    def outside(self) -> tuple[float, float] | None:
        """(CPUs kept busy by others on average, its uncertainty), or None without /proc/stat."""
        busy = _busy_seconds(self.cpus)
        wall = time.perf_counter() - self.wall
        if busy is None or self.busy is None or wall <= 0:
            return None
        own = time.process_time() - self.own
        try:
            tick = 1.0 / float(os.sysconf("SC_CLK_TCK"))
        except (OSError, ValueError, AttributeError):
            tick = 0.01
        # each CPU's counter is read twice in whole ticks: up to one tick each, plus one
        error = (len(self.cpus) + 1) * tick / wall
        return max(0.0, (busy - self.busy - own) / wall), error


def noise_reasons(*, cpus: int, threads: int, outside: tuple[float, float] | None = None,
                  loadavg: float | None = None,
                  calibration_ms: tuple[float, float] | None = None,
                  speedup: float | None = None,
                  interval: tuple[float, float] | None = None) -> list[str]:
    """Why a measurement window was noisy (empty: quiet). Pure: every input is a measured figure.

    - outside load: other processes kept more than ``OUTSIDE_LOAD`` CPUs busy beyond the ones the
      benchmark's threads leave spare (the load average stands in where /proc/stat is missing);
    - calibration drift: the fixed loop's time before and after the window differs by more than
      ``CALIBRATION_DRIFT``;
    - ratio spread: the speed-up's interval is wider than ``RATIO_SPREAD`` of the speed-up.
    """
    reasons: list[str] = []
    spare = max(0, cpus - threads)
    if outside is not None:
        value, error = outside
        if value - error > spare + OUTSIDE_LOAD:
            reasons.append(f"outside load: other processes kept {value:.2f} of {cpus} CPUs busy "
                           f"({spare} spare beside {threads} benchmark threads)")
    elif loadavg is not None and loadavg - threads > spare + LOADAVG_MARGIN:
        reasons.append(f"load average {loadavg:.2f} on {cpus} CPUs with {threads} benchmark "
                       "threads")
    if calibration_ms is not None:
        before, after = calibration_ms
        drift = abs(after - before) / max(1e-9, min(before, after))
        if drift > CALIBRATION_DRIFT:
            reasons.append(f"calibration drift: a fixed loop took {before:.1f} ms before and "
                           f"{after:.1f} ms after the window ({drift:.0%} apart)")
    if speedup and interval is not None:
        lo, hi = interval
        width = (hi - lo) / speedup
        if width > RATIO_SPREAD:
            reasons.append(f"ratio spread: the 95% interval {lo:.2f}-{hi:.2f}x is {width:.0%} of "
                           f"the speed-up {speedup:.2f}x")
    return reasons


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def measure_point(engine: Callable[[dict[str, Any]], Any],
                  reference: Callable[[dict[str, Any]], Any], feed: dict[str, Any],
                  p: BenchmarkParams, log: Callable[[str], None] = print) -> dict[str, Any]:
    """One grid point of one engine: `measure_points` with one engine."""
    return measure_points([engine], reference, feed, p, log)[0]


def measure_points(engines: Sequence[Callable[[dict[str, Any]], Any]],
                   reference: Callable[[dict[str, Any]], Any], feed: dict[str, Any],
                   p: BenchmarkParams, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One grid point of several engines, timed together against one reference
    (`measure_robin`), with the noise detector around the window: the engines whose point was
    noisy are measured once more (with the reference); a point still noisy says so (``noisy``,
    ``noise``)."""
    results: list[dict[str, Any] | None] = [None] * len(engines)
    first: dict[int, list[str]] = {}
    todo = list(range(len(engines)))
    for attempt in (1, 2):
        probe = LoadProbe.start()
        before = calibrate()
        robin = measure_robin([engines[i] for i in todo], reference, feed, p)
        after = calibrate()
        outside, load = probe.outside(), _loadavg()
        again = []
        for j, i in enumerate(todo):
            point = _point_result(robin["engines"][j], robin["reference"], robin["rounds"][j], p,
                                  probe, outside, load, (before, after), attempt)
            if point["noisy"] and attempt == 1:
                first[i] = point["noise"]
                again.append(i)
            if i in first and attempt == 2:
                point["first_attempt_noise"] = first[i]
            results[i] = point
        if not again:
            break
        log(f"noisy window ({'; '.join(first[again[0]])}): measuring once more"
            + (f" ({len(again)} of {len(engines)} engines)" if len(engines) > 1 else ""))
        todo = again
    return [r for r in results if r is not None]


def _point_result(engine: dict[str, Any], ref: dict[str, Any], rounds: list[list[float]],
                  p: BenchmarkParams, probe: LoadProbe, outside: tuple[float, float] | None,
                  load: float | None, calibration: tuple[float, float],
                  attempt: int) -> dict[str, Any]:
    """The recorded figures of one engine at one grid point, with the noise verdict."""
    point, lo, hi = speedup_interval(rounds)
    # one round (a model too slow for MIN_ROUNDS rounds in max_seconds) gives no interval
    interval = (lo, hi) if len(rounds) >= 2 else None
    reasons = noise_reasons(cpus=len(probe.cpus), threads=p.threads, outside=outside,
                            loadavg=load, calibration_ms=calibration, speedup=point,
                            interval=interval)
    return {
        **engine,
        "reference": ref,
        "speedup": round(point, 2),
        "speedup_interval": None if interval is None else [round(lo, 2), round(hi, 2)],
        "rounds": len(rounds),
        "noisy": bool(reasons),
        "noise": reasons,
        "attempts": attempt,
        "load": {
            "cpus": len(probe.cpus),
            "outside_cpus": None if outside is None else round(outside[0], 3),
            "loadavg_1m": None if load is None else round(load, 2),
            "calibration_ms": [round(calibration[0], 2), round(calibration[1], 2)],
        },
    }


def top_ops(profile: Path, runs: int, n: int = 5) -> list[dict[str, Any]]:
    """The n operator types with the most kernel time in an ONNX Runtime profile file."""
    events = json.loads(profile.read_text())
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            op = str(e.get("args", {}).get("op_name", "?"))
            totals[op] = totals.get(op, 0.0) + float(e.get("dur", 0))
    whole = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [{"op": op, "ms_per_run": round(us / 1000.0 / max(1, runs), 4),
             "share": round(us / whole, 4)} for op, us in ranked]


def _vocab_size(source: Path) -> int:
    try:
        config = json.loads((source / "config.json").read_text())
    except (OSError, ValueError):
        return 1000
    vocab = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
    return int(vocab) if vocab else 1000
