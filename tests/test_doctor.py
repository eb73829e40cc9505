"""`deploy-build doctor`: machine facts, runtimes, and which targets build and are measured here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.host.machine import detect

RECIPE = """\
name: hw
model: {{source: {model}}}
targets:
  cpu:
    steps: [{{export-onnx: {{}}}}]
    checks: {{parity: {{}}}}
  needs-amx:
    hardware: {{requires: {{cpu_features: [{flag}]}}}}
    steps: [{{export-onnx: {{}}}}]
    checks: {{parity: {{}}}}
  gpu:
    hardware: {{device: cuda, requires: {{compute_capability: 8.0}}}}
    steps: [{{export-onnx: {{}}}}, {{ort-quantize: {{mode: fp16}}}}]
    checks: {{parity: {{}}}}
"""


@pytest.fixture
def recipe(tmp_path: Path, tiny_model_dir: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text("")
    path = tmp_path / "hw.yaml"
    path.write_text(RECIPE.format(model=tiny_model_dir, flag="not_a_real_flag"))
    return path


def test_doctor_explains_each_target(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if detect().gpus:
        pytest.skip("this machine has a GPU")
    assert main(["doctor", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "machine:\n  cpu: " in out and "cuda: no CUDA device" in out
    assert "  onnxruntime        " in out and "CPUExecutionProvider" in out
    assert "  hw/cpu: builds and is measured here\n" in out
    assert "  hw/needs-amx: SKIPPED here: needs CPU feature not_a_real_flag; this CPU (" in out
    assert ("  hw/gpu: SKIPPED here: needs cuda compute capability >= 8.0; this machine has no CUDA "
            "device\n    still built and cached here: 1:export-onnx, 2:ort-quantize\n") in out
    assert "    not here: check:parity: needs cuda compute capability >= 8.0;" in out


def test_doctor_json(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", str(recipe), "--json", "-t", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["machine"]["cpu"]["count"] == detect().cpu_count
    assert report["runtimes"]["tensorrt"] is None  # not installable here
    assert report["targets"] == {"hw/cpu": {
        "status": "ok", "reason": None, "not_here": {},
        "runs_here": ["1:export-onnx", "check:parity", "check:parity:reference"],
        "hardware": {"accelerator": None, "device": "cpu"}, "gates": []}}


def test_doctor_without_a_recipe_shows_the_machine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("machine:\n") and "runtimes:\n" in out and "targets:" not in out


def test_doctor_says_which_gates_hold_on_this_machine(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """recipes/bert-edge.yaml on a faked AVX2-only CPU ($DEPLOY_BUILD_CPUINFO) and a faked VNNI one."""
    from orchestrator.host import machine

    repo = Path(__file__).resolve().parents[1]
    for flags, goal in (("avx avx2 fma", "not judged here: this machine lacks avx512_vnni"),
                        ("avx avx2 fma avx512f avx512_vnni", "judged here")):
        (tmp_path / "cpuinfo").write_text(f"model name\t: Fake\nflags\t\t: {flags}\n")
        monkeypatch.setenv("DEPLOY_BUILD_CPUINFO", str(tmp_path / "cpuinfo"))
        machine.detect.cache_clear()
        assert main(["doctor", str(repo / "recipes" / "bert-edge.yaml"), "-t", "edge-int8"]) == 0
        out = capsys.readouterr().out
        assert "gate benchmark.min_speedup 1: judged here" in out
        assert f"gate benchmark.min_speedup 3 (when the CPU has avx512_vnni): {goal}" in out, out
    machine.detect.cache_clear()
