"""benchmark: latency of the engine on synthetic inputs over a batch x sequence grid.

Each grid point runs ``warmup`` iterations, then windows of ``window`` iterations until the
medians of the last two windows agree within ``stability`` (and at least ``min_runs`` ran), or
``max_runs`` / ``max_seconds`` is hit (then ``stable`` is false and ``spread`` says how far apart
the last two window medians were). The graph adds one shared task that runs the same benchmark on
the PyTorch reference (the untouched model source); ``summarize`` turns both into speedups.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.step import Resources, StepContext
from orchestrator.steps.engines import EngineCheck, require_cpu

Positive = Annotated[int, Field(ge=1)]


class BenchmarkParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch: list[Positive] | None = Field(None, min_length=1, description="Batch sizes of the "
                                         "grid (default: the recipe's inputs.shapes.batch).")
    sequence: list[Positive] | None = Field(None, min_length=1, description="Sequence lengths of "
                                            "the grid (default: the recipe's inputs.shapes.sequence).")
    threads: int = Field(2, ge=1, description="Intra-op threads of the engine.")
    warmup: int = Field(5, ge=0, description="Untimed runs before measuring each grid point.")
    min_runs: int = Field(20, ge=1, description="Timed runs before a point may count as stable.")
    max_runs: int = Field(200, ge=1, description="Most timed runs per grid point.")
    window: int = Field(10, ge=1, description="Runs per window; window medians are compared.")
    stability: float = Field(0.05, gt=0, description="Consecutive window medians must agree "
                             "within this fraction.")
    max_seconds: float = Field(10.0, gt=0, description="Time limit per grid point (warm-up "
                               "included).")
    precision_hint: Literal["f32", "bf16", "f16"] = Field(
        "f32", description="OpenVINO INFERENCE_PRECISION_HINT.")
    profile: bool = Field(False, description="ONNX Runtime engines: record the 5 operator types "
                          "that take the most time (profiled in a separate session).")
    min_speedup: float | None = Field(None, gt=0, description="Fail unless every grid point is "
                                      "at least this much faster than the PyTorch reference.")

    @model_validator(mode="after")
    def _runs(self) -> BenchmarkParams:
        if self.min_runs > self.max_runs:
            raise ValueError(f"min_runs ({self.min_runs}) is more than max_runs ({self.max_runs})")
        return self


class Benchmark(EngineCheck):
    name = "benchmark"
    version = "1"
    description = "Median/p90/p99 latency and throughput over a batch x sequence grid."
    Params = BenchmarkParams
    inputs = ("model", "source")
    resources = Resources(cpu=64)  # clamped to all the executor's cpus: a benchmark runs alone
    gate_fields = ("min_speedup",)
    machine_keys = ("cpu_model", "cpu_count")  # latency from another machine is not this one's
    # Profiling and the OpenVINO hint do not apply to PyTorch: fixing them lets every target share
    # one reference task.
    reference = {"profile": False, "precision_hint": "f32"}

    @classmethod
    def complete_params(cls, params: Any, model: dict[str, Any]) -> Any:
        """An unset grid is the recipe's inputs.shapes."""
        shapes = model.get("shapes", {})
        return params.model_copy(update={
            "batch": params.batch or shapes.get("batch") or [1],
            "sequence": params.sequence or shapes.get("sequence") or [128]})

    def run(self, ctx: StepContext) -> dict[str, Any]:
        require_cpu(ctx.hardware, "benchmark")
        from orchestrator.steps.engines import detect_precision, open_engine

        p: BenchmarkParams = ctx.params
        model, trc = ctx.input("model"), ctx.model.trust_remote_code
        vocab = _vocab_size(ctx.input("source"))
        engine = open_engine(model, p.threads, p.precision_hint, task=ctx.model.task,
                             trust_remote_code=trc)
        results: dict[str, Any] = {}
        batches, sequences = p.batch or [1], p.sequence or [128]
        for b in batches:
            for s in sequences:
                ctx.log(f"benchmark {engine.runtime} batch {b} sequence {s}")
                results[point_key(b, s)] = measure(engine.run, synthetic(b, s, vocab), p)
        metrics: dict[str, Any] = {
            "results": results,
            "threads": p.threads,
            "precision_hint": p.precision_hint,
            "precision": detect_precision(model),
            "runtime": engine.describe(),
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
        }
        if p.profile and engine.runtime == "onnxruntime":
            metrics["profile"] = {}
            for b in batches:
                for s in sequences:
                    with tempfile.TemporaryDirectory(prefix="ort-profile-") as tmp:
                        prof = open_engine(model, p.threads, profile_dir=Path(tmp),
                                           task=ctx.model.task, trust_remote_code=trc)
                        feed = synthetic(b, s, vocab)
                        runs = p.warmup + p.window
                        for _ in range(runs):
                            prof.run(feed)
                        path = prof.end_profiling()
                        metrics["profile"][point_key(b, s)] = top_ops(Path(str(path)), runs)
        elif p.profile:
            ctx.warn(f"profile: only ONNX Runtime engines can be profiled, not {engine.runtime}")
        return metrics

    @classmethod
    def summarize(cls, params: Any, metrics: dict[str, Any],
                  reference: dict[str, Any] | None) -> dict[str, Any]:
        out = {**metrics, "results": {k: dict(v) for k, v in metrics["results"].items()}}
        if reference is None:
            return out
        out["speedup"] = {}
        for key, point in out["results"].items():
            ref_ms = reference.get("results", {}).get(key, {}).get("median_ms")
            if ref_ms and point.get("median_ms"):
                point["reference_median_ms"] = ref_ms
                point["speedup"] = out["speedup"][key] = round(ref_ms / point["median_ms"], 2)
        out["reference_runtime"] = reference.get("runtime")
        return out

    @classmethod
    def gate(cls, params: Any, metrics: dict[str, Any], reference: dict[str, Any] | None) -> list[str]:
        need = params.min_speedup
        if need is None:
            return []
        if reference is None:
            return [f"min_speedup {need}x is set but there are no reference measurements"]
        summary = cls.summarize(params, metrics, reference)
        problems = []
        for key, point in summary["results"].items():
            got = point.get("speedup")
            if got is None:
                problems.append(f"{key}: no reference measurement to compare with")
            elif got < need:
                problems.append(f"{key}: speedup {got:.2f}x < {need:g}x (short by "
                                f"{need - got:.2f}x; {point['median_ms']} ms vs PyTorch "
                                f"{point['reference_median_ms']} ms)")
        return problems


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
            p: BenchmarkParams) -> dict[str, Any]:
    import numpy as np

    start = time.perf_counter()

    def over() -> bool:
        return time.perf_counter() - start >= p.max_seconds

    for _ in range(p.warmup):
        run(feed)
    times: list[float] = []
    medians: list[float] = []
    stable = False
    spread: float | None = None
    while len(times) < p.max_runs:
        window: list[float] = []
        while len(window) < p.window and len(times) + len(window) < p.max_runs:
            t0 = time.perf_counter()
            run(feed)
            window.append((time.perf_counter() - t0) * 1000.0)
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
    ms = np.asarray(times)
    median = float(np.median(ms))
    batch = int(feed["input_ids"].shape[0])
    return {
        "median_ms": round(median, 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "throughput": round(batch * 1000.0 / median, 2),
        "runs": len(times),
        "stable": stable,
        "spread": None if spread is None else round(spread, 4),
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


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _vocab_size(source: Path) -> int:
    try:
        config = json.loads((source / "config.json").read_text())
    except (OSError, ValueError):
        return 1000
    vocab = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
    return int(vocab) if vocab else 1000
