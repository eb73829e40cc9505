"""export-onnx, ort-optimize, ort-quantize, onnx-slim and torchscript-export on the tiny random
BERT: parity with PyTorch, dynamic axes, byte determinism, fusion counts and warnings, and one
real build through the CLI with cache hits."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.runtime import hf
from orchestrator.step import ModelInfo, Step, StepContext
from orchestrator.steps.export_onnx import ExportOnnx
from orchestrator.steps.onnx_slim import OnnxSlim
from orchestrator.steps.ort_optimize import OrtOptimize
from orchestrator.steps.ort_quantize import OrtQuantize
from orchestrator.steps.torchscript_export import TorchscriptExport

FEATURES = "feature-extraction"
CLASSIFY = "sequence-classification"
# Padded batches with other batch sizes and sequence lengths than the export's dummy input.
BATCHES = [
    ["hello world", "the quick brown fox jumps over the lazy dog and the dog was not good"],
    ["a"],
    ["test sentence", "how fast does this run", "bad"],
]


def run_step(cls: type[Step], out: Path, inputs: dict[str, Path], task: str = FEATURES,
             **params: Any) -> tuple[StepContext, dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    ctx = StepContext(params=cls.Params(**params), inputs=inputs, out_dir=out,
                      outputs=dict(cls.outputs), hardware={"device": "cpu"},
                      model=ModelInfo(task=task), threads=1)
    metrics = cls().run(ctx)
    json.dumps(metrics, allow_nan=False)  # JSON-able
    return ctx, metrics


def ort_run(path: Path, enc: dict[str, Any]) -> Any:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in enc.items() if k in names})[0]


def torch_run(model_dir: Path, task: str, enc: dict[str, Any]) -> Any:
    import torch

    model = hf.load_model(model_dir, task)
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in enc.items()}, return_dict=True)
    return out[hf.output_names(task)[0]].numpy()


def encode(model_dir: Path, texts: list[str]) -> dict[str, Any]:
    return dict(hf.load_tokenizer(model_dir)(texts, padding=True, return_tensors="np"))


def cosine(a: Any, b: Any) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def exported(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ctx, _ = run_step(ExportOnnx, tmp_path_factory.mktemp("export"), {"model": tiny_model_dir})
    return ctx.output("model")


@pytest.fixture(scope="module")
def optimized(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    ctx, metrics = run_step(OrtOptimize, tmp_path_factory.mktemp("opt"), {"model": exported})
    return ctx.output("model"), (ctx, metrics)


def test_step_modules_import_without_heavy_packages() -> None:
    code = ("import sys\nimport orchestrator.steps.export_onnx, orchestrator.steps.ort_optimize, "
            "orchestrator.steps.ort_quantize, orchestrator.steps.onnx_slim, "
            "orchestrator.steps.torchscript_export\n"
            "heavy = {'torch', 'transformers', 'onnx', 'onnxruntime', 'onnxslim', 'numpy'}\n"
            "print(sorted(heavy & set(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_export_valid_and_matches_pytorch_on_dynamic_shapes(exported: Path,
                                                            tiny_model_dir: Path) -> None:
    import onnx

    model = onnx.load(str(exported))
    onnx.checker.check_model(model)
    for value in [*model.graph.input, *model.graph.output]:
        dims = [d.dim_param for d in value.type.tensor_type.shape.dim][:2]
        assert dims == ["batch", "sequence"], value.name
    assert [i.name for i in model.graph.input] == hf.input_names()
    assert [o.name for o in model.graph.output] == ["last_hidden_state"]
    for texts in BATCHES:
        enc = encode(tiny_model_dir, texts)
        diff = np.abs(ort_run(exported, enc) - torch_run(tiny_model_dir, FEATURES, enc)).max()
        assert diff < 1e-4, (texts, diff)


def test_export_metrics_and_byte_determinism(exported: Path, tiny_model_dir: Path,
                                            tmp_path: Path) -> None:
    ctx, metrics = run_step(ExportOnnx, tmp_path / "again", {"model": tiny_model_dir})
    assert ctx.output("model").read_bytes() == exported.read_bytes()
    assert metrics["opset"] == 17 and metrics["exporter"] == "legacy"
    assert metrics["inputs"] == hf.input_names() and metrics["outputs"] == ["last_hidden_state"]
    assert metrics["parameters"] == sum(p.numel() for p in
                                        hf.load_model(tiny_model_dir, FEATURES).parameters())
    assert metrics["nodes"] > 100


def test_dynamo_export_has_dynamic_shapes_and_needs_opset_18(tiny_model_dir: Path,
                                                             tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opset 18"):
        run_step(ExportOnnx, tmp_path / "bad", {"model": tiny_model_dir}, exporter="dynamo")
    ctx, metrics = run_step(ExportOnnx, tmp_path / "dyn", {"model": tiny_model_dir},
                            exporter="dynamo", opset=18)
    assert metrics["opset"] == 18
    for texts in BATCHES[:2]:
        enc = encode(tiny_model_dir, texts)
        diff = np.abs(ort_run(ctx.output("model"), enc) - torch_run(tiny_model_dir, FEATURES, enc))
        assert diff.max() < 1e-4


def test_classifier_export_matches_pytorch(tiny_classifier_dir: Path, tmp_path: Path) -> None:
    ctx, metrics = run_step(ExportOnnx, tmp_path, {"model": tiny_classifier_dir}, task=CLASSIFY)
    assert metrics["outputs"] == ["logits"]
    for texts in BATCHES:
        enc = encode(tiny_classifier_dir, texts)
        got = ort_run(ctx.output("model"), enc)
        assert got.shape == (len(texts), 3)
        assert np.abs(got - torch_run(tiny_classifier_dir, CLASSIFY, enc)).max() < 1e-4


def test_optimize_fuses_attention_on_legacy_eager_export(optimized: tuple[Path, Any],
                                                         exported: Path,
                                                         tiny_model_dir: Path) -> None:
    path, (ctx, metrics) = optimized
    # 2 layers: one Attention each; 2 SkipLayerNorms per layer; embeddings fused once.
    assert metrics["fused"] == {"Attention": 2, "BiasGelu": 2, "EmbedLayerNormalization": 1,
                                "SkipLayerNormalization": 4}
    assert (metrics["num_heads"], metrics["hidden_size"]) == (4, 32)
    assert metrics["nodes_after"] < metrics["nodes_before"]
    assert ctx.warnings == []
    for texts in BATCHES:
        enc = encode(tiny_model_dir, texts)
        assert np.abs(ort_run(path, enc) - ort_run(exported, enc)).max() < 1e-4


def test_optimize_warns_when_attention_cannot_fuse(tiny_model_dir: Path, exported: Path,
                                                   tmp_path: Path) -> None:
    sdpa, _ = run_step(ExportOnnx, tmp_path / "sdpa", {"model": tiny_model_dir},
                       attn_implementation="sdpa")
    ctx, metrics = run_step(OrtOptimize, tmp_path / "opt", {"model": sdpa.output("model")})
    assert "Attention" not in metrics["fused"]
    assert len(ctx.warnings) == 1 and ctx.warnings[0].startswith("attention was not fused: ")
    assert "attn_implementation: eager" in ctx.warnings[0]
    # onnx-slim before ort-optimize blocks the fusion too.
    slim, slim_metrics = run_step(OnnxSlim, tmp_path / "slim", {"model": exported})
    assert slim_metrics["nodes_after"] < slim_metrics["nodes_before"]
    ctx, metrics = run_step(OrtOptimize, tmp_path / "opt2", {"model": slim.output("model")})
    assert "Attention" not in metrics["fused"] and ctx.warnings


def test_slim_keeps_outputs(exported: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    ctx, _ = run_step(OnnxSlim, tmp_path, {"model": exported})
    enc = encode(tiny_model_dir, BATCHES[0])
    assert np.abs(ort_run(ctx.output("model"), enc) - ort_run(exported, enc)).max() < 1e-4


def test_quantize_dynamic_on_fused_model(optimized: tuple[Path, Any], tiny_model_dir: Path,
                                         tmp_path: Path) -> None:
    path, _ = optimized
    ctx, metrics = run_step(OrtQuantize, tmp_path, {"model": path, "source": tiny_model_dir})
    assert metrics["mode"] == "dynamic"
    assert metrics["size_after"] < metrics["size_before"] * 0.6
    assert metrics["quantized_ops"]["QAttention"] == 2
    assert metrics["quantized_ops"]["MatMulInteger"] > 0
    enc = encode(tiny_model_dir, BATCHES[0])
    assert cosine(ort_run(ctx.output("model"), enc), ort_run(path, enc)) > 0.99


def test_quantize_static_on_fused_model_with_samples(optimized: tuple[Path, Any],
                                                     tiny_model_dir: Path, tmp_path: Path) -> None:
    path, _ = optimized
    samples = tmp_path / "samples.txt"
    samples.write_text("hello world\n\nthe lazy dog is good\nhow fast is this model\nbad\n")
    ctx, metrics = run_step(OrtQuantize, tmp_path / "q",
                            {"model": path, "source": tiny_model_dir, "samples": samples},
                            mode="static", calibration_samples=3)
    assert metrics["quantized_ops"]["QuantizeLinear"] > 0  # activations, not only weights
    for texts in BATCHES:
        enc = encode(tiny_model_dir, texts)
        assert cosine(ort_run(ctx.output("model"), enc), ort_run(path, enc)) > 0.99


def test_static_keeps_matmuls_after_gelu_in_float(optimized: tuple[Path, Any],
                                                  exported: Path) -> None:
    from orchestrator.steps.ort_quantize import _after_gelu

    # One feed-forward output projection per layer, in the fused and in the plain graph.
    assert len(_after_gelu(optimized[0])) == 2
    assert len(_after_gelu(exported)) == 2


@pytest.mark.parametrize("params", [{"mode": "static", "calibrate_method": "percentile"},
                                    {"mode": "fp16"}])
def test_quantize_static_and_fp16_on_unfused_export(params: dict[str, Any], exported: Path,
                                                    tiny_model_dir: Path, tmp_path: Path) -> None:
    ctx, metrics = run_step(OrtQuantize, tmp_path, {"model": exported, "source": tiny_model_dir},
                            **params)
    assert metrics["mode"] == params["mode"]
    enc = encode(tiny_model_dir, BATCHES[2])
    got = ort_run(ctx.output("model"), enc)
    assert got.dtype == np.float32 and got.shape == (3, enc["input_ids"].shape[1], 32)
    assert cosine(got, ort_run(exported, enc)) > 0.99


def test_torchscript_matches_pytorch(tiny_model_dir: Path, tiny_classifier_dir: Path,
                                     tmp_path: Path) -> None:
    import torch

    for folder, task in ((tiny_model_dir, FEATURES), (tiny_classifier_dir, CLASSIFY)):
        ctx, metrics = run_step(TorchscriptExport, tmp_path / task, {"model": folder}, task=task)
        assert metrics["parameters"] > 0
        module = torch.jit.load(str(ctx.output("model")))
        for texts in BATCHES:
            enc = encode(folder, texts)
            with torch.no_grad():
                got = module(*(torch.from_numpy(enc[n]) for n in hf.input_names())).numpy()
            assert np.abs(got - torch_run(folder, task, enc)).max() < 1e-4


def _recipe(path: Path, model_dir: Path, quantize: str) -> Path:
    path.write_text(textwrap.dedent(f"""\
        name: tiny-bert
        model:
          source: {json.dumps(str(model_dir))}
        targets:
          cpu-int8:
            steps:
              - export-onnx: {{}}
              - ort-optimize: {{}}
              - ort-quantize: {quantize}
        """))
    return path


def test_cli_builds_recipe_and_reuses_cached_steps(tiny_model_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli import main

    recipe = _recipe(tmp_path / "tiny.yaml", tiny_model_dir, "{}")
    common = ["--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o")]
    assert main([str(recipe), *common]) == 0
    target = tmp_path / "o" / "tiny-bert" / "cpu-int8"
    assert (target / "model.onnx").is_file()
    manifest = json.loads((target / "manifest.json").read_text())
    assert [s["step"] for s in manifest["steps"]] == ["export-onnx", "ort-optimize", "ort-quantize"]
    optimize = manifest["steps"][1]
    assert optimize["metrics"]["fused"]["Attention"] == 2 and optimize["warnings"] == []
    assert manifest["steps"][2]["metrics"]["quantized_ops"]["QAttention"] == 2

    _recipe(recipe, tiny_model_dir, "{per_channel: false}")
    capsys.readouterr()
    assert main([str(recipe), *common, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    status = {t["step"]: t["status"] for t in summary["tasks"]}
    assert status == {"export-onnx": "hit", "ort-optimize": "hit", "ort-quantize": "run"}
