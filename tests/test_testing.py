"""orchestrator.testing: run_step for a plugin's unit tests, and --only T/POS --in-process."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, Project

from orchestrator.run.worker import ContractError
from orchestrator.testing import run_step


def _fake_steps() -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("fake_steps_for_run_step", FIXTURES / "fake_steps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_run_step_plans_runs_and_validates_like_a_worker(tmp_path: Path) -> None:
    fake = _fake_steps()
    src = tmp_path / "m.txt"
    src.write_text("abc")
    # planned first: 'salt' does not apply to mode plain, so it runs at its default
    run = run_step(fake.Mode, {"mode": "plain", "salt": 7}, {"model": src})  # type: ignore[attr-defined]
    assert run.params.salt == 0 and run.metrics == {"salt": 0}  # type: ignore[attr-defined]
    assert run.outputs["model"].read_bytes() == b"abc0" and run.verdict is None
    salted = run_step(fake.Mode, {"mode": "salted", "salt": 7}, {"model": src})  # type: ignore[attr-defined]
    assert salted.outputs["model"].read_bytes() == b"abc7"
    # an output its format rejects fails as in a build
    with pytest.raises(ContractError, match="wrote an invalid onnx output 'model'"):
        run_step(fake.BadOnnx, {"content": "not onnx"}, {"model": src})  # type: ignore[attr-defined]
    # a check is judged with the params given, gates included
    check = run_step(fake.Length, {"max_bytes": 2}, {"model": src, "source": tmp_path})  # type: ignore[attr-defined]
    assert check.metrics == {"bytes": 3} and check.verdict is not None
    assert check.verdict.failures == ["3 bytes > max_bytes 2 (over by 1)"]
    with pytest.raises(ValueError, match=r"reads inputs \['source'\]; pass them in inputs="):
        run_step(fake.Length, {}, {"model": src})  # type: ignore[attr-defined]


def test_run_step_on_a_real_step_and_check(tiny_model_dir: Path, tmp_path: Path) -> None:
    from orchestrator.steps.export_onnx import ExportOnnx
    from orchestrator.steps.parity import Parity

    exported = run_step(ExportOnnx, {"opset": 17}, {"model": tiny_model_dir}, out_dir=tmp_path / "x")
    onnx_file = exported.outputs["model"]
    assert onnx_file == tmp_path / "x" / "model.onnx" and onnx_file.stat().st_size > 0
    parity = run_step(Parity, {"max_samples": 4}, {"model": onnx_file, "source": tiny_model_dir})
    assert parity.metrics["precision"] == "fp32" and parity.metrics["min_cosine"] > 0.9999
    assert parity.verdict is not None and parity.verdict.failures == []
    assert parity.verdict.summary["thresholds"]["mean_cosine"] == 0.9999
    # the runtime the check was planned for came from what the input holds
    assert parity.metrics["runtime"]["runtime"] == "onnxruntime"


PID_STEP = '''
import os
from typing import Any
from pydantic import BaseModel, ConfigDict
from orchestrator.step import Step, StepContext


class PidParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Pid(Step[PidParams]):
    name = "pid"
    version = "1"
    outputs = {"model": "pid.txt"}
    input_formats = {"model": ("any",)}
    output_formats = {"model": "text"}

    def run(self, ctx: StepContext[PidParams]) -> dict[str, Any]:
        ctx.output("model").write_text(ctx.input("model").read_text())
        return {"pid": os.getpid()}
'''


def test_in_process_runs_the_task_in_the_cli_process_and_caches_nothing(
        project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    (project.root / "pid_step.py").write_text(PID_STEP)
    recipe = project.recipe("plugins: [fake_steps.py, pid_step.py]\nmodel: {source: ./model}\n"
                            "targets:\n  t:\n    steps:\n      - fake-upper: {suffix: '!'}\n"
                            "      - pid: {}\n")
    capsys.readouterr()
    assert project.run(str(recipe), "--only", "t/2:pid", "--in-process") == 1
    err = capsys.readouterr().err
    assert "its input 'model' (from t/1:fake-upper) is not cached (RUN); build it first: " \
           f"deploy-build {recipe.as_posix()} --only t/1:fake-upper" in err
    assert project.run(str(recipe), "--only", "t/1:fake-upper") == 0
    capsys.readouterr()
    assert project.run(str(recipe), "--only", "t/2:pid", "--in-process") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"] == {"pid": os.getpid()}  # this process: breakpoint() would stop here
    assert Path(out["outputs"], "pid.txt").read_text() == "{\"HIDDEN\": 4}WEIGHTS-V1!"
    capsys.readouterr()
    project.run(str(recipe), "--dry-run")
    assert "RUN   t/2:pid" in capsys.readouterr().out.replace("  (new)", "")
    assert project.run(str(recipe), "--in-process") == 1  # one task, named with --only


def test_in_process_via_the_cli_on_the_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    from test_tiny_builds import run_cli

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{source: {tiny_model_dir}}}\ntargets:\n  t:\n    steps:\n"
                      "      - export-onnx: {opset: 17}\n      - ort-optimize: {}\n")
    (tmp_path / "pyproject.toml").write_text("")
    first = run_cli([str(recipe), "--only", "t/1:export-onnx"], tmp_path)
    assert first.returncode == 0, first.stderr
    r = run_cli([str(recipe), "--only", "t/2:ort-optimize", "--in-process"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "in-process: t/2:ort-optimize (ort-optimize) in the foreground" in r.stderr
    out = json.loads(r.stdout)
    assert Path(out["outputs"], "model.onnx").stat().st_size > 0 and out["metrics"]


HW_STEP = '''\
from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator.step import Step, StepContext


class P(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReadsDevice(Step):
    name = "reads-device"
    version = "1"
    Params = P
    outputs = {"model": "model.txt"}
    input_formats = {"model": ("any",)}
    output_formats = {"model": "text"}
    hardware_keys = HARDWARE_KEYS

    def run(self, ctx: StepContext) -> dict[str, Any]:
        ctx.output("model").write_text(str(ctx.hardware["device"]))
        return {"hardware": dict(ctx.hardware)}
'''


@pytest.mark.parametrize("declared", [False, True])
def test_ctx_hardware_is_the_same_under_run_step_and_in_a_build(
        project: Project, capsys: pytest.CaptureFixture[str], declared: bool) -> None:
    """Issue 18, item 11: a step that read ctx.hardware["device"] without declaring it passed its
    run_step test (the whole dict) and failed every build (only its hardware_keys)."""
    import importlib.util

    keys = '("device",)' if declared else "()"
    (project.root / "hw_step.py").write_text(HW_STEP.replace("HARDWARE_KEYS", keys))
    spec = importlib.util.spec_from_file_location(f"hw_step_{declared}", project.root / "hw_step.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    src = project.root / "m.txt"
    src.write_text("abc")
    r = project.recipe("name: hw\nplugins: [hw_step.py]\nmodel:\n  source: ./model\ntargets:\n"
                       "  a:\n    hardware: {device: cpu}\n    steps:\n      - reads-device: {}\n")
    s = project.build_json(r, capsys)
    if declared:
        run = run_step(module.ReadsDevice, {}, {"model": src}, hardware={"device": "cpu"})
        assert run.metrics == {"hardware": {"device": "cpu"}}
        assert s["rc"] == 0
        return
    with pytest.raises(KeyError, match="add 'device' to reads-device's hardware_keys"):
        run_step(module.ReadsDevice, {}, {"model": src}, hardware={"device": "cpu"})
    assert s["rc"] == 2
    assert "add 'device' to reads-device's hardware_keys" in s["tasks"][0]["log_tail"]
