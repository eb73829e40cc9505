"""The checks written on the step contract: size (max_mb), the benchmark's load time and peak
memory (max_load_ms, max_peak_mb) and classifier accuracy (max_drop), on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.errors import FatalError
from orchestrator.steps.accuracy import Accuracy, AccuracyParams, read_labelled
from orchestrator.steps.benchmark import Benchmark, BenchmarkParams
from orchestrator.steps.size import Size, SizeParams
from orchestrator.testing import run_step

MB = 2**20


def test_size_of_a_file_and_of_a_folder_engine_and_its_gate(tmp_path: Path) -> None:
    one = tmp_path / "model.onnx"
    one.write_bytes(b"x" * (3 * MB))
    run = run_step(Size, {"max_mb": 2.5}, {"model": one})
    assert run.metrics == {"bytes": 3 * MB, "mb": 3.0, "files": 1}
    assert run.verdict is not None
    assert run.verdict.failures == ["size 3.00 MB > max_mb 2.5 (over by 0.50 MB)"]
    ir = tmp_path / "ir"
    (ir / "sub").mkdir(parents=True)
    (ir / "model.xml").write_bytes(b"x" * MB)
    (ir / "sub" / "model.bin").write_bytes(b"x" * MB)
    folder = run_step(Size, {"max_mb": 2.5}, {"model": ir})
    assert folder.metrics["files"] == 2 and folder.verdict is not None
    assert folder.verdict.failures == []
    assert Size.judge(SizeParams(), folder.metrics, None).failures == []  # no budget: passes


def test_footprint_gates() -> None:
    m = {"results": {}, "footprint": {"load_ms": 120.0, "peak_mb": 300.5, "peak_reset": True}}
    p = BenchmarkParams(max_load_ms=100, max_peak_mb=200)
    assert Benchmark.judge(p, m, None).failures == [
        "load time 120 ms > max_load_ms 100 (over by 20.0 ms)",
        "peak memory 300.5 MB > max_peak_mb 200 (over by 100.5 MB)",
    ]
    assert Benchmark.judge(BenchmarkParams(max_load_ms=200), m, None).failures == []
    missing = {"results": {}, "footprint": {"load_ms": 1.0, "peak_mb": None}}
    [problem] = Benchmark.judge(BenchmarkParams(max_peak_mb=1), missing, None).failures
    assert problem.startswith("peak memory: not measured")
    assert {"max_load_ms", "max_peak_mb", "min_speedup"} == set(Benchmark.gate_fields)


def test_the_benchmark_measures_the_engines_load_and_memory(tiny_model_dir: Path,
                                                            tmp_path: Path) -> None:
    from orchestrator.steps.export_onnx import ExportOnnx

    onnx_file = run_step(ExportOnnx, {}, {"model": tiny_model_dir}).outputs["model"]
    p = {"batch": [1, 2], "sequence": [8], "threads": 1, "warmup": 0, "min_runs": 2,
         "max_runs": 4, "window": 2, "max_seconds": 1, "max_peak_mb": 10_000}
    run = run_step(Benchmark, p, {"model": onnx_file, "source": tiny_model_dir})
    fp = run.metrics["footprint"]
    assert fp["load_ms"] > 0 and fp["first_run_ms"] > 0 and fp["peak_reset"] is True
    assert 0 <= fp["peak_mb"] < 500  # a tiny model: the engine adds little
    assert run.verdict is not None and run.verdict.failures == []
    strict = run_step(Benchmark, {**p, "max_load_ms": 1e-6}, {"model": onnx_file,
                                                               "source": tiny_model_dir})
    assert strict.verdict is not None
    assert strict.verdict.failures[0].startswith("load time ") and "> max_load_ms 1e-06" in \
        strict.verdict.failures[0]


def test_read_labelled_takes_indices_and_names_and_says_where_a_line_is_wrong(
        tmp_path: Path) -> None:
    f = tmp_path / "l.tsv"
    f.write_text("0\tthe quick fox\n\nLABEL_2\ta short one\n")
    assert read_labelled(f, {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}, 10) == \
        ([0, 2], ["the quick fox", "a short one"])
    f.write_text("0\tok\nno tab here\n")
    with pytest.raises(ValueError, match=r"l.tsv:2: expected 'label<TAB>text'"):
        read_labelled(f, {}, 10)
    f.write_text("7\tok\n")
    with pytest.raises(ValueError, match=r"l.tsv:1: unknown label '7'; the model knows LABEL_0"):
        read_labelled(f, {"LABEL_0": 0}, 10)


def test_accuracy_gate_on_the_drop() -> None:
    p = AccuracyParams(max_drop=0.01, min_accuracy=0.9)
    m = {"accuracy": 0.85, "samples": 100, "correct": 85}
    v = Accuracy.judge(p, m, {"accuracy": 0.9})
    assert v.summary["drop"] == 0.05 and v.summary["reference_accuracy"] == 0.9
    assert v.failures == [
        "top-1 accuracy 0.8500 is 0.0500 below the original's 0.9000 (max_drop 0.01, over by 0.0400)",
        "top-1 accuracy 0.8500 < min_accuracy 0.9 (short by 0.0500)",
    ]
    assert Accuracy.judge(AccuracyParams(), {**m, "accuracy": 0.895}, {"accuracy": 0.9}).failures == []


def _labelled_by_the_original(model_dir: Path, path: Path) -> Path:
    """Texts labelled with the original model's own predictions (its accuracy is 1.0)."""
    import torch
    from conftest import WORDS

    from orchestrator.runtime import hf

    texts = [" ".join(WORDS[i:i + 3 + i % 4]) for i in range(0, 40)]
    model = hf.load_model(model_dir, "sequence-classification")
    enc = hf.encode(hf.load_tokenizer(model_dir), texts, max_length=128, tensors="pt")
    with torch.no_grad():
        pred = model(**enc).logits.argmax(-1).tolist()
    names = {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    path.write_text("".join(f"{names[y] if i % 2 else y}\t{t}\n"
                            for i, (y, t) in enumerate(zip(pred, texts, strict=True))))
    return path


def test_accuracy_with_run_step_against_its_reference_run(tiny_classifier_dir: Path,
                                                          tmp_path: Path) -> None:
    from orchestrator.steps.export_onnx import ExportOnnx

    labelled = _labelled_by_the_original(tiny_classifier_dir, tmp_path / "l.tsv")
    onnx_file = run_step(ExportOnnx, {}, {"model": tiny_classifier_dir},
                         task="sequence-classification").outputs["model"]
    ins = {"source": tiny_classifier_dir, "labelled": labelled}
    ref = run_step(Accuracy, {}, {**ins, "model": tiny_classifier_dir}, reference=True,
                   task="sequence-classification")
    assert ref.metrics["accuracy"] == 1.0 and ref.metrics["runtime"]["runtime"] == "pytorch"
    run = run_step(Accuracy, {"max_drop": 0.0}, {**ins, "model": onnx_file},
                   task="sequence-classification", reference_metrics=ref.metrics)
    assert run.metrics["runtime"]["runtime"] == "onnxruntime" and run.verdict is not None
    assert run.verdict.summary["drop"] == 0.0 and run.verdict.failures == []
    with pytest.raises(ValueError, match="accuracy measures sequence classifiers"):
        run_step(Accuracy, {}, {**ins, "model": onnx_file})  # planned: task feature-extraction


def test_size_and_footprint_checks_in_a_build_through_the_cli(tiny_classifier_dir: Path,
                                                              tmp_path: Path) -> None:
    from test_tiny_builds import run_cli

    _labelled_by_the_original(tiny_classifier_dir, tmp_path / "labelled.tsv")
    recipe = tmp_path / "r.yaml"
    bench = ("benchmark: {batch: [1], sequence: [8], threads: 1, warmup: 0, min_runs: 2, "
             "max_runs: 4, window: 2, max_seconds: 1, max_peak_mb: 10000, max_load_ms: 60000}")
    recipe.write_text(f"""\
name: cls
model: {{source: {tiny_classifier_dir}, task: sequence-classification}}
inputs: {{labelled: labelled.tsv}}
targets:
  fp32:
    steps: [{{export-onnx: {{opset: 17}}}}]
    checks:
      size: {{max_mb: 50}}
      accuracy: {{max_drop: 0.0}}
      {bench}
  tight:
    steps: [{{export-onnx: {{opset: 17}}}}]
    checks:
      size: {{max_mb: 0.001}}
      accuracy: {{min_accuracy: 1.0}}
""")
    (tmp_path / "pyproject.toml").write_text("")
    r = run_cli([str(recipe), "--json"], tmp_path)
    assert r.returncode == 2, r.stderr  # 'tight' fails its size budget
    ok = json.loads((tmp_path / "build" / "cls" / "fp32" / "manifest.json").read_text())
    assert ok["status"] == "ok", ok.get("failures")
    acc = ok["checks"]["accuracy"]
    assert acc["reference_accuracy"] == 1.0 and acc["accuracy"] == 1.0 and acc["drop"] == 0.0
    assert acc["samples"] == 40 and acc["gate"] == {"max_drop": 0.0, "min_accuracy": None}
    assert ok["checks"]["size"]["passed"] and ok["checks"]["size"]["bytes"] > 0
    assert ok["benchmark"]["footprint"]["load_ms"] > 0 and ok["benchmark"]["passed"]
    tight = json.loads((tmp_path / "build" / "cls" / "tight" / "manifest.json").read_text())
    assert tight["status"] == "failed"
    assert [f for f in tight["failures"] if f.startswith("check size: size ")]
    assert "check accuracy" not in " ".join(tight["failures"])  # 1.0 >= min_accuracy 1.0
    # the size and accuracy measurements are shared by both targets: one task each
    labels = [t["label"] for t in json.loads(r.stdout)["tasks"]]
    assert sum(1 for label in labels if "check:accuracy" in label and "reference" not in label) == 1


def test_accuracy_is_refused_for_other_tasks_with_where_and_why(tiny_model_dir: Path,
                                                                tmp_path: Path) -> None:
    from orchestrator.plan.graph import compile_graph
    from orchestrator.recipe import load_recipe

    (tmp_path / "l.tsv").write_text("0\thello\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{source: {tiny_model_dir}}}\ninputs: {{labelled: l.tsv}}\n"
                      "targets:\n  t:\n    steps: [{export-onnx: {}}]\n"
                      "    checks: {accuracy: {}}\n")
    with pytest.raises(FatalError, match=r"check 'accuracy' at .*r.yaml:6:14: accuracy measures "
                                         r"sequence classifiers"):
        compile_graph([load_recipe(recipe)])
    recipe.write_text(recipe.read_text().replace("inputs: {labelled: l.tsv}\n", "")
                      .replace("model: {source: ", "model: {task: sequence-classification, source: "))
    with pytest.raises(FatalError, match="accuracy needs a labelled file: set inputs.labelled"):
        compile_graph([load_recipe(recipe)])
