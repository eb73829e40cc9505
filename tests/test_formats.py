"""Formats: a chain that cannot work is refused when the recipe loads; outputs are validated
before they are cached."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Project

from orchestrator import formats

HEAD = """\
name: f
plugins: [fake_steps.py]
model: {source: ./model}
targets:
  t:
    steps:
"""


def _error(project: Project, capsys, steps: str, checks: str = "") -> tuple[int, str, Path]:
    r = project.recipe(HEAD + steps + checks)
    capsys.readouterr()
    rc = project.run(str(r), "--dry-run")
    return rc, capsys.readouterr().err, r


def test_openvino_ir_into_an_onnx_step_is_refused_at_load(project: Project, capsys) -> None:
    rc, err, r = _error(project, capsys, "      - export-onnx: {}\n      - openvino-convert: {}\n"
                        "      - ort-quantize: {}\n")
    assert rc == 1
    assert err == (f"error: step 'ort-quantize' at {r}:9:9 takes onnx, but 'openvino-convert' before "
                   f"it (at {r}:8:9) gives openvino-ir; change the order of the steps or the step\n")


def test_onnx_step_first_is_refused_with_the_step_that_fits(project: Project, capsys) -> None:
    rc, err, r = _error(project, capsys, "      - ort-optimize: {}\n")
    assert rc == 1
    assert err == (f"error: step 'ort-optimize' at {r}:7:9 takes onnx, but the first step of a "
                   "target gets the model source (hf-model); put 'export-onnx' before it\n")


def test_a_check_that_cannot_run_the_engine_is_refused(project: Project, capsys) -> None:
    rc, err, r = _error(project, capsys, "      - fake-upper: {}\n", "    checks:\n      parity: {}\n")
    assert rc == 1
    assert "check 'parity' at" in err and "takes hf-model or onnx or openvino-ir or torchscript" in err
    assert "'fake-upper' before it" in err and "gives text" in err


def test_a_plugin_without_formats_is_refused_when_registered(project: Project, capsys) -> None:
    (project.root / "noformat.py").write_text(
        "from orchestrator.step import Step\n"
        "class NoFormat(Step):\n    name = 'no-format'\n    version = '1'\n"
        "    outputs = {'model': 'm.bin'}\n"
        "    def run(self, ctx):\n        return {}\n")
    r = project.recipe(HEAD.replace("[fake_steps.py]", "[noformat.py]") + "      - no-format: {}\n")
    capsys.readouterr()
    assert project.run(str(r), "--dry-run") == 1
    err = capsys.readouterr().err
    assert "is not a valid step: it reads 'model' but does not say in which formats" in err
    assert "outputs ['model'] have no format" in err


@pytest.mark.parametrize("content,why", [("", "it is empty (0 bytes)"),
                                         ("garbage{", "it does not parse as ONNX")])
def test_an_invalid_output_fails_its_own_step_and_is_not_cached(
        project: Project, capsys, content: str, why: str) -> None:
    r = project.recipe(HEAD + f"      - fake-bad-onnx: {{content: {content!r}}}\n"
                       "      - fake-upper: {}\n")
    s = project.build_json(r, capsys)
    assert s["rc"] == 2
    assert s["by_label"]["t/1:fake-bad-onnx"]["status"] == "fail"
    assert s["by_label"]["t/2:fake-upper"]["status"] == "skip"
    assert "wrote an invalid onnx output 'model' (model.onnx): " + why in s["err"]
    again = project.build_json(r, capsys)  # nothing was cached: it runs again
    assert again["by_label"]["t/1:fake-bad-onnx"]["status"] == "fail"
    assert again["by_label"]["t/1:fake-bad-onnx"]["reasons"] == ["new"]


def test_validators(tmp_path: Path, tiny_model_dir: Path) -> None:
    ir = tmp_path / "ir"
    ir.mkdir()
    assert formats.validate_output("openvino-ir", ir) == "it must hold one *.xml file, found []"
    (ir / "model.xml").write_text('<net name="m"><layers><layer id="0" type="Const"/></layers></net>')
    assert formats.validate_output("openvino-ir", ir) == \
        "model.bin (the weights of model.xml) is missing or empty"
    (ir / "model.bin").write_bytes(b"\0" * 8)
    assert formats.validate_output("openvino-ir", ir) is None
    (ir / "model.xml").write_text("<html></html>")
    assert "not an OpenVINO IR" in str(formats.validate_output("openvino-ir", ir))
    assert formats.validate_output("hf-model", tiny_model_dir) is None
    assert "no config.json" in str(formats.validate_output("hf-model", tmp_path))
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"not a zip")
    assert "not a TorchScript archive" in str(formats.validate_output("torchscript", pt))
    assert formats.validate_output("my-own-format", pt) is None  # open to plugins
    assert formats.validate_output("onnx", tmp_path / "missing.onnx") == "it was not written"


def test_every_builtin_step_declares_its_formats() -> None:
    from orchestrator.registry import BUILTINS, Registry

    reg = Registry(entry_points=False)
    for name in BUILTINS:
        cls = reg.get(name).cls
        assert set(cls.output_formats) == set(cls.outputs), name
        if "model" in cls.inputs:
            assert cls.input_formats["model"], name


def test_a_step_that_writes_into_its_input_fails_and_the_cache_stays_intact(
        project: Project, capsys) -> None:
    r = project.recipe(HEAD + "      - fake-upper: {}\n      - fake-scribble: {}\n"
                       "  other:\n    steps:\n      - fake-upper: {}\n")
    s = project.build_json(r, capsys)
    assert s["rc"] == 2
    assert s["by_label"]["t/2:fake-scribble"]["status"] == "fail"
    assert "fake-scribble' tried to write into its input" in s["err"] \
        or "fake-scribble' wrote into its input" in s["err"]
    assert (project.out / "f/other/model.txt").read_bytes() == b"{\"HIDDEN\": 4}WEIGHTS-V1"
    again = project.build_json(r, capsys)  # the shared upstream blob was not damaged
    assert again["by_label"]["t/1:fake-upper"]["status"] == "hit"
    assert (project.out / "f/other/model.txt").read_bytes() == b"{\"HIDDEN\": 4}WEIGHTS-V1"
