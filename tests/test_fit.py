"""orchestrator.plan.fit: which targets this machine can build and measure, and the precise reasons."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestrator.host.machine import Gpu, Machine
from orchestrator.plan.fit import unmet
from orchestrator.step import Hardware

CPU_ONLY = Machine("Intel(R) Xeon(R) Processor", 2, frozenset({"avx2", "avx512_vnni"}), 25.3)
A100 = Gpu(0, "NVIDIA A100-SXM4-80GB", "8.0", 85.9)
T4 = Gpu(1, "Tesla T4", "7.5", 16.1)
GPUS = Machine("AMD EPYC", 64, frozenset({"avx2"}), 512.0, (0, 1), (T4, A100), "550", "12.4")


def hw(**kw: object) -> Hardware:
    return Hardware.model_validate(kw)


def test_a_cpu_target_without_requirements_fits_anywhere() -> None:
    assert unmet(hw(), CPU_ONLY) == [] and unmet(hw(), GPUS) == []


def test_cpu_features_and_memory() -> None:
    assert unmet(hw(requires={"cpu_features": ["avx512_vnni"]}), CPU_ONLY) == []
    assert unmet(hw(requires={"cpu_features": ["avx512_vnni", "amx_int8"]}), CPU_ONLY) == [
        "needs CPU feature amx_int8; this CPU (Intel(R) Xeon(R) Processor) lacks it"]
    assert unmet(hw(requires={"cpu_features": ["amx_int8", "amx_bf16"]}), GPUS) == [
        "needs CPU features amx_int8, amx_bf16; this CPU (AMD EPYC) has none of them"]
    assert unmet(hw(requires={"memory_gb": 64}), CPU_ONLY) == [
        "needs 64 GB of memory; this machine has 25.3 GB"]


def test_cuda_targets_on_a_machine_without_a_gpu() -> None:
    assert unmet(hw(device="cuda"), CPU_ONLY) == [
        "needs a CUDA device; this machine has no CUDA device"]
    assert unmet(hw(device="cuda", requires={"compute_capability": 8.0}), CPU_ONLY) == [
        "needs cuda compute capability >= 8.0; this machine has no CUDA device"]
    broken = Machine("x", 1, frozenset(), 1.0, (0,), gpu_problem="nvidia-smi is not on PATH")
    assert unmet(hw(device="cuda"), broken) == [
        "needs a CUDA device; this machine has no CUDA device (nvidia-smi is not on PATH)"]


def test_cuda_requirements_need_one_gpu_that_has_them_all() -> None:
    assert unmet(hw(device="cuda", requires={"compute_capability": 8.0}), GPUS) == []
    assert unmet(hw(device="cuda", accelerator="a100", requires={"memory_gb": 40}), GPUS) == []
    # the T4 has the memory, the A100 the capability: neither has both plus the name
    reasons = unmet(hw(device="cuda", accelerator="T4", requires={"compute_capability": 8.6}), GPUS)
    assert reasons == ["needs cuda accelerator T4, compute capability >= 8.6; this machine's GPUs: "
                       "1: Tesla T4 (compute capability 7.5, 16.1 GB); "
                       "0: NVIDIA A100-SXM4-80GB (compute capability 8.0, 85.9 GB)"]


def test_requirements_are_validated() -> None:
    with pytest.raises(ValidationError, match="applies to device: cuda only"):
        hw(requires={"compute_capability": 8.0})
    with pytest.raises(ValidationError):
        hw(requires={"cpu_features": ["AVX-512"]})
    with pytest.raises(ValidationError):
        hw(requires={"vram": 8})


def test_the_manifest_records_requirements_only_when_set() -> None:
    assert hw().record() == {"accelerator": None, "device": "cpu"}
    assert hw(device="cuda", requires={"compute_capability": 8.0}).record() == {
        "accelerator": None, "device": "cuda", "requires": {"compute_capability": 8.0}}


GRAPH_RECIPE = """\
name: hw
model: {{source: {model}}}
targets:
  cpu:
    steps: [{{export-onnx: {{}}}}]
    checks: {{parity: {{}}}}
  needs-flag:
    hardware: {{requires: {{cpu_features: [not_a_real_flag]}}}}
    steps: [{{export-onnx: {{}}}}]
    checks: {{parity: {{}}}}
  gpu-ort:
    hardware: {{device: cuda}}
    steps: [{{export-onnx: {{}}}}]
    checks: {{parity: {{}}}}
  gpu-ov:
    hardware: {{device: cuda}}
    steps: [{{export-onnx: {{}}}}, {{openvino-convert: {{}}}}]
    checks: {{parity: {{}}}}
"""


def _graph(tmp_path, model):  # type: ignore[no-untyped-def]
    from orchestrator.plan.graph import compile_graph
    from orchestrator.recipe import load_recipe
    from orchestrator.registry import Registry

    (tmp_path / "pyproject.toml").write_text("")
    path = tmp_path / "hw.yaml"
    path.write_text(GRAPH_RECIPE.format(model=model))
    return compile_graph([load_recipe(path, Registry())])


def _by_label(graph, fit):  # type: ignore[no-untyped-def]
    return {f"{t}/{pos}": fit.tasks.get(task.id) for task in graph.tasks()
            for _, t, pos in task.labels}


def test_fit_graph_skips_hardware_bound_tasks_only(tmp_path, tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    from orchestrator.plan.fit import fit_graph

    graph = _graph(tmp_path, tiny_model_dir)
    fit = fit_graph(graph, CPU_ONLY)
    tasks = _by_label(graph, fit)
    no_gpu = "needs a CUDA device; this machine has no CUDA device"
    assert fit.targets == {
        "hw/needs-flag": "needs CPU feature not_a_real_flag; this CPU (Intel(R) Xeon(R) Processor) "
                         "lacks it",
        "hw/gpu-ort": no_gpu, "hw/gpu-ov": no_gpu}
    # one export for every target; the openvino conversion is hardware-independent too
    assert tasks["gpu-ort/1:export-onnx"] is None and tasks["gpu-ov/2:openvino-convert"] is None
    assert tasks["gpu-ort/check:parity"] == no_gpu and tasks["gpu-ov/check:parity:reference"] == no_gpu
    # needs-flag's checks are the cpu target's tasks (same chain, same device): they run for it
    assert tasks["needs-flag/check:parity"] is None and tasks["cpu/check:parity"] is None


def test_fit_graph_on_a_gpu_machine_names_the_missing_runtime(tmp_path, tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    from orchestrator.plan.fit import fit_graph, installed

    if installed("onnxruntime-gpu"):
        pytest.skip("onnxruntime-gpu is installed")
    graph = _graph(tmp_path, tiny_model_dir)
    fit = fit_graph(graph, GPUS)
    tasks = _by_label(graph, fit)
    assert tasks["gpu-ort/check:parity"] == (
        "parity on a cuda target needs onnxruntime-gpu, which is not installed here "
        "(pip install 'deploy-build[gpu]')")
    assert tasks["gpu-ov/check:parity"] == (
        "parity on a cuda target: openvino-ir engines run on the CPU only; give the target "
        "hardware: {device: cpu}")
    assert tasks["gpu-ort/check:parity:reference"] is None  # PyTorch: torch is installed
    assert fit.targets["hw/gpu-ort"] == tasks["gpu-ort/check:parity"]
    assert "hw/cpu" not in fit.targets
