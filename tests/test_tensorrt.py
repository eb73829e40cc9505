"""tensorrt-build and the TensorRT runtime: profiles, params, keys, routing, formats and skipping,
tested here without TensorRT; the `gpu`-marked test builds and checks a tiny engine where
TensorRT and a CUDA GPU exist (nowhere this project was developed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator import formats
from orchestrator.runtime.engines import engine_kind, ort_providers, toolchain_for_format
from orchestrator.runtime.trt import profile

RECIPE = """\
name: trt
model: {{source: {model}}}
inputs: {{shapes: {{batch: [8, 1], sequence: [64, 16]}}}}
targets:
  gpu-fp16:
    hardware: {{device: cuda}}
    steps:
      - export-onnx: {{}}
      - ort-quantize: {{mode: fp16}}
      - tensorrt-build: {{workspace_mb: 512}}
    checks: {{parity: {{mean_cosine: 0.999}}}}
"""


def test_the_profile_spans_the_shapes_with_opt_at_the_latency_point() -> None:
    assert profile([8, 1], [64, 16]) == {"min": [1, 16], "opt": [1, 64], "max": [8, 64]}
    assert profile([1], [128]) == {"min": [1, 128], "opt": [1, 128], "max": [1, 128]}
    with pytest.raises(ValueError, match="at least one batch"):
        profile([], [128])


def test_onnx_checks_on_a_cuda_target_ask_for_the_gpu_providers() -> None:
    cpu = ["AzureExecutionProvider", "CPUExecutionProvider"]
    assert ort_providers(cpu, "cpu") == ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ort_providers(gpu, "cuda") == gpu
    assert ort_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda") == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(RuntimeError, match=r"install the gpu extra .*onnxruntime-gpu"):
        ort_providers(cpu, "cuda")


def test_engine_format_kind_and_runtime(tmp_path: Path) -> None:
    engine = tmp_path / "engine"
    engine.mkdir()
    assert "model.plan" in str(formats.validate_output(formats.TENSORRT_ENGINE, engine))
    (engine / "model.plan").write_bytes(b"\x00plan")
    assert "engine.json" in str(formats.validate_output(formats.TENSORRT_ENGINE, engine))
    (engine / "engine.json").write_text(json.dumps({"precision": "fp16"}))
    assert formats.validate_output(formats.TENSORRT_ENGINE, engine) is None
    assert engine_kind(engine) == "tensorrt" and engine_kind(engine / "model.plan") == "tensorrt"
    assert toolchain_for_format(formats.TENSORRT_ENGINE) == ("tensorrt",)
    assert "tensorrt" not in toolchain_for_format("a-plugin-format")  # only for its own engines
    from orchestrator.runtime.engines import detect_precision

    assert detect_precision(engine) == "fp16"


@pytest.fixture
def trt_recipe(tmp_path: Path, tiny_model_dir: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text("")
    path = tmp_path / "trt.yaml"
    path.write_text(RECIPE.format(model=tiny_model_dir))
    return path


def test_the_step_is_planned_keyed_and_routed_without_tensorrt(trt_recipe: Path) -> None:
    from orchestrator.host.machine import gpu_fact
    from orchestrator.plan import document
    from orchestrator.plan.graph import compile_graph
    from orchestrator.recipe import load_recipe
    from orchestrator.registry import Registry

    graph = compile_graph([load_recipe(trt_recipe, Registry())])
    task = next(t for t in graph.tasks() if t.step == "tensorrt-build")
    # the profile's shapes come from the recipe, sorted: they are keyed as the values used
    assert task.params == {"batch": [1, 8], "sequence": [16, 64], "workspace_mb": 512,
                           "optimization_level": 3}
    assert task.resources.cuda == 1  # routed to a CUDA device (Ray: num_gpus)
    assert task.input_formats == {"model": "onnx"}
    doc = document(task, {"model": "0" * 64})
    # an engine is for one GPU type, TensorRT and CUDA: all three are in its key
    assert doc["machine"] == {"gpu_name": gpu_fact("gpu_name"),
                              "gpu_compute_capability": gpu_fact("gpu_compute_capability"),
                              "cuda_version": gpu_fact("cuda_version")}
    assert set(doc["toolchain"]) == {"tensorrt", "onnx"}
    parity = next(t for t in graph.tasks() if t.step == "parity" and not t.reference)
    assert parity.input_formats["model"] == formats.TENSORRT_ENGINE
    assert set(document(parity, {"model": "0" * 64, "reference": "1" * 64})["toolchain"]) == {
        "tensorrt"}


def test_a_gpu_target_is_skipped_here_and_its_fp16_onnx_is_built(trt_recipe: Path, tmp_path: Path,
                                                                  capsys) -> None:  # type: ignore[no-untyped-def]
    from orchestrator.cli import main
    from orchestrator.host.machine import detect

    if detect().gpus:
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    rc = main([str(trt_recipe), "--cache", str(tmp_path / "c"), "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0
    status = {t["label"]: (t["status"], t["reasons"]) for t in summary["tasks"]}
    why = "needs a CUDA device; this machine has no CUDA device"
    assert status["gpu-fp16/3:tensorrt-build"] == ("skip", [why])
    assert status["gpu-fp16/2:ort-quantize"][0] == "run"
    m = json.loads((out / "trt/gpu-fp16/manifest.json").read_text())
    assert m["status"] == "skipped" and m["skipped"] == why
    fp16 = m["steps"][1]
    assert fp16["step"] == "ort-quantize" and fp16["params"]["mode"] == "fp16"
    # the fp16 graph keeps int64 inputs and fp32 outputs: what TensorRT and the CUDA provider take
    import onnx

    from orchestrator.store.local import LocalStore

    store = LocalStore(tmp_path / "c")
    path = store.blob_path(fp16["outputs"]["model"]["digest"])
    graph = onnx.load(str(path), load_external_data=False).graph
    assert {i.type.tensor_type.elem_type for i in graph.input} == {onnx.TensorProto.INT64}
    assert {o.type.tensor_type.elem_type for o in graph.output} == {onnx.TensorProto.FLOAT}
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    store.close()


@pytest.mark.gpu
def test_a_tiny_engine_builds_and_passes_parity_on_a_gpu(trt_recipe: Path, tmp_path: Path,
                                                        capsys) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("tensorrt")
    from orchestrator.cli import main
    from orchestrator.host.machine import detect

    if not detect().gpus:
        pytest.skip("no CUDA GPU")
    out = tmp_path / "out"
    rc = main([str(trt_recipe), "--cache", str(tmp_path / "c"), "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0, summary
    m = json.loads((out / "trt/gpu-fp16/manifest.json").read_text())
    assert m["status"] == "ok" and m["checks"]["parity"]["passed"]
    build = m["steps"][2]
    assert build["metrics"]["byte_reproducible"] is False and build["metrics"]["precision"] == "fp16"
    assert set(build["outputs"]) == {"model", "timing_cache"}
