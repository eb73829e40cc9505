"""The parity and benchmark checks and their runtime layer, on tiny random BERT models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import make_tiny_model

from orchestrator.registry import Registry
from orchestrator.runtime.engines import detect_precision, engine_kind, open_engine
from orchestrator.step import ModelInfo, StepContext
from orchestrator.steps.benchmark import Benchmark, BenchmarkParams, measure
from orchestrator.steps.parity import Parity, ParityParams

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


def export_onnx(folder: Path, out: Path, task: str = "feature-extraction") -> Path:
    """Legacy torch.onnx export of a tiny HF folder (independent of the export-onnx step)."""
    import torch

    from orchestrator.runtime import hf

    model = hf.load_model(folder, task)
    enc = hf.load_tokenizer(folder)(["hello world", "a short one"], padding=True,
                                    return_tensors="pt")
    names, outs = hf.input_names(), hf.output_names(task)

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any) -> Any:
            return self.model(**dict(zip(names, args, strict=True)), return_dict=True)[outs[0]]

    with torch.no_grad():
        torch.onnx.export(Wrapper().eval(), tuple(enc[n] for n in names), str(out),
                          input_names=names, output_names=outs, opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names + outs})
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checks")


@pytest.fixture(scope="module")
def fe_onnx(tiny_model_dir: Path, work: Path) -> Path:
    return export_onnx(tiny_model_dir, work / "fe.onnx")


@pytest.fixture(scope="module")
def per_tensor_int8(fe_onnx: Path, work: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = work / "int8.onnx"
    quantize_dynamic(str(fe_onnx), str(out), weight_type=QuantType.QInt8)
    return out


def ctx_for(params: Any, tmp_path: Path, task: str = "feature-extraction",
            **inputs: Path) -> StepContext:
    return StepContext(params=params, inputs=inputs, out_dir=tmp_path, outputs={},
                       hardware={"device": "cpu"}, model=ModelInfo(task=task), threads=1)


def run_parity(model: Path, source: Path, tmp_path: Path, task: str = "feature-extraction",
               **params: Any) -> tuple[ParityParams, dict[str, Any]]:
    p = ParityParams(**params)
    return p, Parity().run(ctx_for(p, tmp_path, task, model=model, source=source))


def test_registered_builtins_validate() -> None:
    reg = Registry(entry_points=False)
    assert reg.get("parity").cls is Parity and reg.get("benchmark").cls is Benchmark
    assert Parity.kind == Benchmark.kind == "check"


def test_parity_fp32_onnx_passes_default_gate(fe_onnx: Path, tiny_model_dir: Path,
                                              tmp_path: Path) -> None:
    samples = tmp_path / "samples.txt"
    samples.write_text("\n".join(f"hello world number {i} is a test" for i in range(10)) + "\n")
    p = ParityParams(batch_size=4, max_samples=6)
    m = Parity().run(ctx_for(p, tmp_path, model=fe_onnx, source=tiny_model_dir, samples=samples))
    assert m["samples"] == 6 and m["precision"] == "fp32" and "top1_agreement" not in m
    assert m["max_abs_diff"] < 1e-4 and m["min_cosine"] > 0.99999
    assert m["runtime"]["runtime"] == "onnxruntime" and m["runtime"]["threads"] == 1
    assert m["runtime"]["providers"] == ["CPUExecutionProvider"]
    assert Parity.judge(p, m, None).failures == []
    # the shared reference task stores tokenized inputs and PyTorch outputs once; the engine's
    # parity then reads them instead of running PyTorch, with the same result
    ref_ctx = ctx_for(p, tmp_path / "ref", source=tiny_model_dir, samples=samples)
    ref_ctx.reference, ref_ctx.outputs = True, dict(Parity.outputs)
    ref_metrics = Parity().run(ref_ctx)
    assert ref_metrics["samples"] == 6 and ref_metrics["runtime"]["runtime"] == "pytorch"
    cached = Parity().run(ctx_for(p, tmp_path, model=fe_onnx, source=tiny_model_dir,
                                  reference=tmp_path / "ref" / "reference"))
    assert {k: cached[k] for k in ("mean_cosine", "min_cosine", "max_abs_diff", "samples")} == \
        {k: m[k] for k in ("mean_cosine", "min_cosine", "max_abs_diff", "samples")}
    assert Parity.judge(p, m, ref_metrics).summary["reference_runtime"]["runtime"] == "pytorch"
    summary = Parity.judge(p, m, None).summary
    assert summary["thresholds"] == {"min_cosine": 0.9999, "mean_cosine": 0.9999,
                                     "max_abs_diff": 1e-2}


def test_parity_broken_engine_fails_and_says_by_how_much(tiny_model_dir: Path, work: Path,
                                                         tmp_path: Path) -> None:
    other = export_onnx(make_tiny_model(work / "other", seed=1), work / "other.onnx")
    p, m = run_parity(other, tiny_model_dir, tmp_path)
    problems = Parity.judge(p, m, None).failures
    assert any(s.startswith("mean cosine") and "< 0.9999 (short by" in s and "fp32 default" in s
               for s in problems), problems
    assert any(s.startswith("max abs diff") and "(over by" in s for s in problems), problems


def test_parity_per_tensor_int8_with_strict_gate(per_tensor_int8: Path, tiny_model_dir: Path,
                                                 tmp_path: Path) -> None:
    p, m = run_parity(per_tensor_int8, tiny_model_dir, tmp_path, min_cosine=0.9999999)
    assert m["precision"] == "int8" and m["min_cosine"] < 0.9999999
    [problem] = Parity.judge(p, m, None).failures
    short = 0.9999999 - m["min_cosine"]
    assert problem.startswith("min cosine 0.99") and "default" not in problem
    assert "< 0.9999999 (short by" in problem
    assert float(problem.split("short by ")[1].rstrip(")")) == pytest.approx(short, rel=0.2)
    assert Parity.judge(p, m, None).summary["thresholds"]["mean_cosine"] == 0.99  # int8 default


@pytest.mark.parametrize("task", ["feature-extraction", "sequence-classification"])
def test_parity_feeds_a_static_engine_what_it_takes(fe_onnx: Path, tiny_model_dir: Path,
                                                    tiny_classifier_dir: Path, work: Path,
                                                    tmp_path: Path, monkeypatch, task: str) -> None:
    """An engine shaped for 8 tokens (as a LiteRT model is for the grid's longest sequence)
    gets samples cut to 8, closed by [SEP]; those are reported apart and not gated."""
    from orchestrator.runtime import engines

    source = tiny_model_dir if task == "feature-extraction" else tiny_classifier_dir
    model = fe_onnx if task == "feature-extraction" else export_onnx(
        tiny_classifier_dir, work / "cls-static.onnx", task)
    real, fed = engines.open_engine, []

    def static_engine(path: Path, *args: Any, **kw: Any) -> Any:
        e = real(path, *args, **kw)
        if path == source:  # the PyTorch reference takes any length
            return e

        def run(feed: dict[str, Any]) -> Any:
            assert feed["input_ids"].shape[1] <= 8, feed["input_ids"].shape
            fed.append(feed["input_ids"])
            return e.run(feed)
        return engines.Engine("litert", e.input_names, run, {**e.describe(), "static_shape": [1, 8]})

    monkeypatch.setattr(engines, "open_engine", static_engine)
    samples = tmp_path / "samples.txt"
    samples.write_text("hello world\na short one\n" + " ".join(["the quick brown fox"] * 4) + "\n"
                       + " ".join(["a good test sentence"] * 3) + "\n")
    p = ParityParams(batch_size=4)
    ctx = ctx_for(p, tmp_path, task, model=model, source=source, samples=samples)
    m = Parity().run(ctx)
    assert m["max_length"] == 256 and m["max_tokens"] == 18 and m["samples"] == 4
    assert m["min_cosine"] > 0.9999 and m["max_abs_diff"] < 1e-4  # the two short ones, whole
    assert m["truncated"]["samples"] == 2 and m["truncated"]["gated"] is False
    assert m["truncated"]["tokens"] == 8
    if task == "feature-extraction":  # 8 of 18 and of 14 tokens pooled: another embedding
        assert m["truncated"]["min_cosine"] < 0.9999
    assert all(ids[2:, 7].tolist() == [3, 3] for ids in fed)  # cut samples end with [SEP] (id 3)
    assert any("2 of 4 samples are longer than the 8 tokens this engine takes" in w
               for w in ctx.warnings)
    assert Parity.judge(p, m, None).failures == []


def test_parity_gate_defaults_per_precision() -> None:
    p = ParityParams()
    per_tensor = {"precision": "int8", "mean_cosine": 0.9671, "min_cosine": 0.959,
                  "max_abs_diff": 1.1}
    assert Parity.judge(p, per_tensor, None).failures == [
        "min cosine 0.9590 < 0.97 (short by 0.0110, int8 default)",
        "mean cosine 0.9671 < 0.99 (short by 0.0229, int8 default)",
    ]
    per_channel = {"precision": "int8", "mean_cosine": 0.994, "min_cosine": 0.989,
                   "max_abs_diff": 0.5}
    assert Parity.judge(p, per_channel, None).failures == []
    bf16 = {"precision": "fp32", "mean_cosine": 0.99998, "min_cosine": 0.99998,
            "max_abs_diff": 0.0258, "top1_agreement": 0.9}
    assert Parity.judge(p, bf16, None).failures == [
        "top-1 agreement 0.9000 < 0.98 (short by 0.0800, fp32 default)",
        "max abs diff 0.0258 > 0.01 (over by 0.0158, fp32 default)",
    ]
    assert Parity.judge(ParityParams(max_abs_diff=0.05, min_top1=0.5), bf16, None).failures == []


def test_parity_classification_top1(tiny_classifier_dir: Path, work: Path,
                                    tmp_path: Path) -> None:
    model = export_onnx(tiny_classifier_dir, work / "cls.onnx", "sequence-classification")
    p, m = run_parity(model, tiny_classifier_dir, tmp_path, "sequence-classification")
    assert m["top1_agreement"] == 1.0 and m["min_cosine"] > 0.9999 and m["samples"] == 4
    assert Parity.judge(p, m, None).failures == []
    assert Parity.judge(p, m, None).summary["thresholds"]["min_top1"] == 0.98


def test_parity_openvino_ir_records_f32_hint(fe_onnx: Path, tiny_model_dir: Path, work: Path,
                                             tmp_path: Path) -> None:
    import openvino as ov

    folder = work / "ov"
    folder.mkdir()
    ov.save_model(ov.convert_model(str(fe_onnx)), str(folder / "model.xml"))
    assert engine_kind(folder) == "openvino" and detect_precision(folder) == "fp32"
    p, m = run_parity(folder, tiny_model_dir, tmp_path, precision_hint="f32")
    rt = m["runtime"]
    assert rt["runtime"] == "openvino" and rt["precision_hint"] == "f32"
    assert rt["inference_precision"] == "f32" and rt["threads"] == 1
    assert Parity.judge(p, m, None).failures == [] and m["min_cosine"] > 0.9999


def test_torchscript_engine_matches_pytorch(tiny_model_dir: Path, work: Path) -> None:
    import torch

    from orchestrator.runtime import hf

    model = hf.load_model(tiny_model_dir, "feature-extraction")
    enc = hf.load_tokenizer(tiny_model_dir)(["hello world"], return_tensors="np")
    batch = {k: v.astype("int64") for k, v in enc.items()}

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids, return_dict=False)[0]

    traced = torch.jit.trace(Wrapper().eval(), tuple(torch.from_numpy(batch[n])
                                                     for n in hf.input_names()))
    traced.save(str(work / "model.pt"))
    ts = open_engine(work / "model.pt", 1)
    ref = open_engine(tiny_model_dir, 1)
    assert ts.runtime == "torchscript" and ref.runtime == "pytorch"
    assert abs(ts.run(batch) - ref.run(batch)).max() < 1e-5


def test_detect_precision(fe_onnx: Path, per_tensor_int8: Path, tiny_model_dir: Path,
                          work: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    assert detect_precision(fe_onnx) == "fp32"
    assert detect_precision(per_tensor_int8) == "int8"
    assert detect_precision(tiny_model_dir) == "fp32"
    half = work / "fp16.onnx"
    onnx.save(float16.convert_float_to_float16(onnx.load(str(fe_onnx)), keep_io_types=True),
              str(half))
    assert detect_precision(half) == "fp16"
    with pytest.raises(ValueError, match="cannot tell"):
        engine_kind(work / "nothing.bin")


def test_benchmark_grid_profile_and_speedup(fe_onnx: Path, tiny_model_dir: Path,
                                            tmp_path: Path) -> None:
    p = BenchmarkParams(batch=[1], sequence=[16], threads=1, warmup=1, min_runs=3, max_runs=12,
                        window=3, max_seconds=5, profile=True)
    m = Benchmark().run(ctx_for(p, tmp_path, model=fe_onnx, source=tiny_model_dir))
    point = m["results"]["b1_s16"]
    side = {"median_ms", "p90_ms", "p99_ms", "mean_ms", "throughput", "runs", "stable", "spread"}
    assert side <= set(point) and set(point["reference"]) == side
    assert 3 <= point["runs"] <= 12 and point["median_ms"] > 0
    assert point["runs"] == point["reference"]["runs"]  # alternated window by window
    assert point["throughput"] == pytest.approx(1000 / point["median_ms"], rel=0.01)
    assert m["threads"] == 1 and m["precision_hint"] == "f32" and m["cpu"]
    assert m["runtime"]["runtime"] == "onnxruntime"
    assert m["reference_runtime"]["runtime"] == "pytorch"
    assert m["speedup"] == {"b1_s16": point["speedup"]}
    ops = m["profile"]["b1_s16"]
    assert 1 <= len(ops) <= 5 and {"op", "ms_per_run", "share"} <= set(ops[0])

    s = Benchmark.judge(p, m, None).summary  # the reference figures are the task's own
    assert s["results"] == m["results"] and s["results"] is not m["results"]
    assert Benchmark.judge(p, m, None).failures == []
    need = point["speedup"] + 1
    v = Benchmark.judge(p.model_copy(update={"min_speedup": need}), m, None)
    if point["noisy"]:  # judged on the interval: a noisy one that reaches the goal is unjudged
        assert len(v.failures + v.unjudged) == 1
        return
    [problem] = v.failures
    assert problem.startswith(f"b1_s16: speedup {point['speedup']:.2f}x < {need:g}x")


def test_benchmark_of_the_source_itself(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A target with no steps benchmarks the PyTorch model against itself."""
    p = BenchmarkParams(sequence=[16], threads=1, warmup=0, min_runs=2, max_runs=4, window=2)
    m = Benchmark().run(ctx_for(p, tmp_path, model=tiny_model_dir, source=tiny_model_dir))
    point = m["results"]["b1_s16"]
    assert m["runtime"]["runtime"] == m["reference_runtime"]["runtime"] == "pytorch"
    assert point["runs"] <= 4 and point["reference"]["runs"] <= 4 and point["speedup"] > 0


def test_measure_stabilization() -> None:
    """The stabilization rule on a clock the runs advance by exact amounts (a timed test would
    follow the machine's load, not the rule)."""
    now = [0.0]
    calls = [0]

    def clock() -> float:
        return now[0]

    def alternating(feed: Any) -> None:  # window medians alternate 1 ms / 3 ms: never stable
        now[0] += 0.001 if (calls[0] // 3) % 2 == 0 else 0.003
        calls[0] += 1

    import numpy as np

    feed = {"input_ids": np.zeros((2, 4))}
    p = BenchmarkParams(warmup=0, min_runs=3, max_runs=12, window=3, stability=0.05)
    r = measure(alternating, feed, p, clock)
    assert r["runs"] == 12 and r["stable"] is False and r["spread"] > 0.5

    def steady(feed: Any) -> None:
        now[0] += 0.002

    r = measure(steady, feed, p.model_copy(update={"stability": 0.5, "min_runs": 6}), clock)
    assert r["stable"] is True and r["runs"] == 6
    r = measure(steady, feed, p.model_copy(update={"max_seconds": 0.001}), clock)
    assert r["runs"] == 1 and r["stable"] is False and r["spread"] is None


def test_a_checks_key_holds_only_the_runtimes_it_runs() -> None:
    from orchestrator.step import Hardware, PlanContext

    def chain(cls: Any, fmt: str, reference: bool = False) -> tuple[str, ...]:
        at = PlanContext(input_formats={"model": fmt, "source": "hf-model"}, reference=reference)
        return tuple(cls.plan(cls.Params(), at).toolchain)

    assert chain(Parity, "onnx") == ("onnxruntime",)
    assert chain(Parity, "openvino-ir") == ("openvino",)
    assert chain(Parity, "torchscript") == ("torch",)
    assert chain(Parity, "hf-model", reference=True) == ("torch", "transformers")
    assert set(chain(Parity, "odd-format")) >= {"onnxruntime", "openvino"}
    # the benchmark also runs the PyTorch reference in the same task: it keys both runtimes
    assert chain(Benchmark, "onnx") == ("onnxruntime", "torch", "transformers")
    assert chain(Benchmark, "openvino-ir") == ("openvino", "torch", "transformers")
    # and a check on a cuda target asks for a CUDA device
    cuda = PlanContext(Hardware(device="cuda"), {"model": "onnx"})
    assert Parity.plan(Parity.Params(), cuda).resources.cuda == 1
    assert Parity.plan(Parity.Params(), PlanContext()).resources.cuda == 0


def test_benchmark_grid_comes_from_shapes_only_when_unset(tmp_path: Path) -> None:
    import shutil

    from conftest import FIXTURES

    from orchestrator.plan.graph import compile_graph
    from orchestrator.recipe import load_recipe

    shutil.copy(FIXTURES / "fake_steps.py", tmp_path)
    (tmp_path / "model").mkdir()

    def bench_params(shapes: str, grid: str) -> dict[str, Any]:
        path = tmp_path / "r.yaml"
        path.write_text(f"plugins: [fake_steps.py]\nmodel: {{source: ./model}}\n"
                        f"inputs: {{shapes: {shapes}}}\ntargets:\n  t:\n"
                        f"    steps: [{{fake-bad-onnx: {{}}}}]\n    checks: {{benchmark: {grid}}}\n")
        graph = compile_graph([load_recipe(path)])
        task = next(t for t in graph.tasks() if t.step == "benchmark" and not t.reference)
        assert "shapes" not in task.model
        return task.params

    unset = bench_params("{batch: [2], sequence: [32]}", "{}")
    assert (unset["batch"], unset["sequence"]) == ([2], [32])
    explicit = [bench_params(s, "{batch: [1], sequence: [16]}")
                for s in ("{batch: [2]}", "{batch: [4], sequence: [64]}")]
    assert explicit[0] == explicit[1]  # shapes changed, the grid did not: same task


def test_params_that_do_not_apply_to_a_mode_stay_out_of_the_key() -> None:
    from orchestrator.step import PlanContext, at_defaults
    from orchestrator.steps.nncf_quantize import NncfQuantize
    from orchestrator.steps.ort_quantize import OrtQuantize

    def keyed(cls: Any, **params: Any) -> dict[str, Any]:
        planned = cls.plan(cls.Params(**params), PlanContext())
        return at_defaults(planned.params, planned.unused).model_dump()

    assert keyed(OrtQuantize, mode="dynamic", calibrate_method="entropy") == keyed(OrtQuantize)
    assert keyed(OrtQuantize, mode="static", calibrate_method="entropy") != \
        keyed(OrtQuantize, mode="static")
    assert keyed(OrtQuantize, mode="fp16", per_channel=False) == keyed(OrtQuantize, mode="fp16")
    assert keyed(NncfQuantize, mode="weights-int8", preset="mixed", group_size=64) == \
        keyed(NncfQuantize, mode="weights-int8")
    assert keyed(NncfQuantize, mode="weights-int4", group_size=64) != \
        keyed(NncfQuantize, mode="weights-int4")
