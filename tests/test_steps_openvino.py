"""openvino-convert and nncf-quantize on the tiny random BERT: parity with PyTorch, dynamic
shapes, fp16 weights, NNCF int8 / weight-only modes, byte determinism and no telemetry files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import WORDS

from orchestrator.runtime import hf
from orchestrator.step import ModelInfo, Step, StepContext
from orchestrator.steps.nncf_quantize import NncfQuantize
from orchestrator.steps.openvino_convert import OpenvinoConvert, telemetry_opt_out

SENTENCES = [" ".join(WORDS[i:i + 3 + i % 9]) for i in range(0, 60, 3)]


def run_step(cls: type[Step], out: Path, inputs: dict[str, Path], **params: Any) -> dict[str, Any]:
    ctx = StepContext(params=cls.Params(**params), inputs=inputs, out_dir=out,
                      outputs=dict(cls.outputs), hardware={"device": "cpu"},
                      model=ModelInfo(task="feature-extraction"), threads=1)
    return cls().run(ctx)


def export_onnx(model_dir: Path, path: Path) -> Path:
    import torch

    model = hf.load_model(model_dir, "feature-extraction")
    names = hf.input_names()

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any) -> Any:
            return self.model(**dict(zip(names, args, strict=True))).last_hidden_state

    enc = hf.load_tokenizer(model_dir)(SENTENCES[:2], padding=True, return_tensors="pt")
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
    with torch.no_grad():
        torch.onnx.export(Wrapper().eval(), tuple(enc[n] for n in names), str(path),
                          input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


@pytest.fixture(scope="module")
def onnx_file(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(tiny_model_dir, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="module")
def ir_dir(onnx_file: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ir")
    run_step(OpenvinoConvert, out, {"model": onnx_file, "source": tiny_model_dir})
    return out / "ir"


@pytest.fixture(scope="module")
def feeds(tiny_model_dir: Path) -> list[dict[str, np.ndarray]]:
    """Two batch/sequence sizes: 1 x (length of one sentence) and 3 x 24 (padded)."""
    tok = hf.load_tokenizer(tiny_model_dir)
    small = tok(SENTENCES[5:6], return_tensors="np")
    big = tok(SENTENCES[:3], padding="max_length", max_length=24, return_tensors="np")
    assert small["input_ids"].shape != big["input_ids"].shape
    return [{n: e[n].astype(np.int64) for n in hf.input_names()} for e in (small, big)]


def ov_infer(ir: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    telemetry_opt_out()
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(ir / "model.xml")), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    return np.asarray(compiled(feed)[0])


def torch_ref(model_dir: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    model = hf.load_model(model_dir, "feature-extraction")
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state
    return np.asarray(out.numpy())


def cosine(ir: Path, model_dir: Path, feed: dict[str, np.ndarray]) -> float:
    mask = feed["attention_mask"]
    a = hf.mean_pool(ov_infer(ir, feed), mask)
    b = hf.mean_pool(torch_ref(model_dir, feed), mask)
    return float((a * b).sum(axis=1).min())


def read_ir(ir: Path) -> tuple[bytes, bytes]:
    return (ir / "model.xml").read_bytes(), (ir / "model.bin").read_bytes()


@pytest.mark.parametrize("source", ["onnx", "pytorch"])
def test_convert_matches_pytorch_at_two_shapes_and_is_deterministic(
        source: str, onnx_file: Path, tiny_model_dir: Path, feeds: list[dict[str, np.ndarray]],
        tmp_path: Path) -> None:
    inputs = {"model": onnx_file if source == "onnx" else tiny_model_dir, "source": tiny_model_dir}
    m = run_step(OpenvinoConvert, tmp_path / "a", inputs, source=source)
    assert m["inputs"] == hf.input_names()
    assert set(m["input_shapes"].values()) == {"[?,?]"}
    assert m["outputs"] == ["last_hidden_state"]
    assert m["weight_precision"] == "f32" and m["ops"] > 50
    ir = tmp_path / "a" / "ir"
    for feed in feeds:
        assert np.abs(ov_infer(ir, feed) - torch_ref(tiny_model_dir, feed)).max() < 1e-4
    run_step(OpenvinoConvert, tmp_path / "b", inputs, source=source)
    assert read_ir(ir) == read_ir(tmp_path / "b" / "ir")


def test_compress_to_fp16_stores_half_size_weights(
        ir_dir: Path, onnx_file: Path, tiny_model_dir: Path,
        feeds: list[dict[str, np.ndarray]], tmp_path: Path) -> None:
    m = run_step(OpenvinoConvert, tmp_path, {"model": onnx_file}, compress_to_fp16=True)
    assert m["weight_precision"] == "f16"
    fp32_bin = (ir_dir / "model.bin").stat().st_size
    fp16_bin = (tmp_path / "ir" / "model.bin").stat().st_size
    assert fp16_bin < 0.6 * fp32_bin
    assert cosine(tmp_path / "ir", tiny_model_dir, feeds[1]) > 0.999


def test_convert_rejects_a_hugging_face_folder_as_onnx(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="export-onnx"):
        run_step(OpenvinoConvert, tmp_path, {"model": tiny_model_dir})


def test_nncf_int8_quantizes_runs_and_is_deterministic(
        ir_dir: Path, tiny_model_dir: Path, feeds: list[dict[str, np.ndarray]],
        tmp_path: Path) -> None:
    samples = tmp_path / "samples.txt"
    samples.write_text("\n".join(SENTENCES) + "\n")
    inputs = {"model": ir_dir, "source": tiny_model_dir, "samples": samples}
    m = run_step(NncfQuantize, tmp_path / "a", inputs, samples=12)
    assert m["mode"] == "int8" and m["preset"] == "performance"
    assert m["calibration_samples"] == 12
    assert m["fake_quantize"] > 0 and m["weight_precision"] == "i8"
    assert m["size_after_bytes"] > 0 and m["size_before_bytes"] > 0
    assert set(m["input_shapes"].values()) == {"[?,?]"}
    # measured 0.99998 on this tiny random model (0.993 on real MiniLM): a loose floor
    for feed in feeds:
        assert cosine(tmp_path / "a" / "ir", tiny_model_dir, feed) > 0.98
    run_step(NncfQuantize, tmp_path / "b", inputs, samples=12)
    assert read_ir(tmp_path / "a" / "ir") == read_ir(tmp_path / "b" / "ir")


def test_nncf_weights_int8_without_samples(
        ir_dir: Path, tiny_model_dir: Path, feeds: list[dict[str, np.ndarray]],
        tmp_path: Path) -> None:
    m = run_step(NncfQuantize, tmp_path, {"model": ir_dir, "source": tiny_model_dir},
                 mode="weights-int8")
    assert m["fake_quantize"] == 0 and m["quantized_constants"] > 0
    assert m["size_after_bytes"] < m["size_before_bytes"]
    assert cosine(tmp_path / "ir", tiny_model_dir, feeds[1]) > 0.999


def test_nncf_int8_default_samples_when_recipe_has_none(
        ir_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    m = run_step(NncfQuantize, tmp_path, {"model": ir_dir, "source": tiny_model_dir})
    assert m["calibration_samples"] == len(hf.read_samples(None))


def test_nncf_int4_with_a_group_size_that_does_not_fit_says_what_to_do(
        ir_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="weights-int8"):  # hidden size 32 < group_size 128
        run_step(NncfQuantize, tmp_path, {"model": ir_dir}, mode="weights-int4")
    m = run_step(NncfQuantize, tmp_path / "ok", {"model": ir_dir}, mode="weights-int4",
                 group_size=16)
    assert "i4" in m["weight_bytes"]


def test_nncf_rejects_an_onnx_input(onnx_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="openvino-convert"):
        run_step(NncfQuantize, tmp_path, {"model": onnx_file}, mode="weights-int8")


def test_no_telemetry_files_in_home(onnx_file: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """A fresh process (no pytest, no CI variables) converts and quantizes: HOME stays empty."""
    home = tmp_path / "home"
    home.mkdir()
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from orchestrator.step import ModelInfo, StepContext
        from orchestrator.steps.nncf_quantize import NncfQuantize
        from orchestrator.steps.openvino_convert import OpenvinoConvert

        def run(cls, out, inputs):
            cls().run(StepContext(params=cls.Params(), inputs=inputs, out_dir=out,
                                  outputs=dict(cls.outputs), hardware={{}}, model=ModelInfo()))

        out = Path({str(tmp_path)!r})
        run(OpenvinoConvert, out / "c", {{"model": Path({str(onnx_file)!r})}})
        run(NncfQuantize, out / "q", {{"model": out / "c" / "ir",
                                      "source": Path({str(tiny_model_dir)!r})}})
        assert "pytest" not in sys.modules  # NNCF stubs its telemetry under pytest
    """)
    env = {k: v for k, v in os.environ.items()
           if k not in ("CI", "NNCF_CI", "TF_BUILD", "JENKINS_URL", "OPENVINO_NO_TELEMETRY")}
    env["HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "q" / "ir" / "model.xml").exists()
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == []
