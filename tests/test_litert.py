"""LiteRT edge steps: their planning, keys and skips everywhere; the real conversion, quantization
and checks of a tiny BERT where the LiteRT environment exists (`make litert-env`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator import formats
from orchestrator.edge import litert_env

RECIPE = """\
name: edge
model: {{source: {model}}}
inputs: {{shapes: {{batch: [1], sequence: [8, 16]}}, samples: samples.txt}}
targets:
  edge-int8:
    steps:
      - litert-convert: {{}}
      - litert-quantize: {{mode: {mode}}}
    checks: {{parity: {{mean_cosine: 0.9}}}}
"""
SAMPLES = "the quick brown fox\nhello world\nhow fast does this run\nedge boxes and phones\n"


def _recipe(tmp_path: Path, model: Path, mode: str = "dynamic-int8") -> Path:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "samples.txt").write_text(SAMPLES)
    path = tmp_path / "edge.yaml"
    path.write_text(RECIPE.format(model=model, mode=mode))
    return path


def test_tflite_format(tmp_path: Path) -> None:
    bad = tmp_path / "m.tflite"
    bad.write_bytes(b"\x1c\x00\x00\x00ONNX")
    assert "TFL3" in str(formats.validate_output(formats.TFLITE, bad))
    bad.write_bytes(b"\x1c\x00\x00\x00TFL3rest")
    assert formats.validate_output(formats.TFLITE, bad) is None


def test_a_missing_environment_skips_the_edge_target_with_the_remedy(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.host.machine import detect
    from orchestrator.plan.fit import fit_graph
    from orchestrator.plan.graph import compile_graph
    from orchestrator.recipe import load_recipe
    from orchestrator.registry import Registry

    monkeypatch.setenv(litert_env.ENV_VAR, str(tmp_path / "no-such-env/bin/python"))
    graph = compile_graph([load_recipe(_recipe(tmp_path, tiny_model_dir), Registry())])
    fit = fit_graph(graph, detect())
    assert fit.targets["edge/edge-int8"] == (
        f"litert-convert runs in the LiteRT environment, not found at "
        f"{tmp_path / 'no-such-env/bin/python'}: {litert_env.SETUP}")
    ref = next(t for t in graph.tasks() if t.reference)
    assert ref.id not in fit.tasks  # the PyTorch reference needs no LiteRT: it still runs


def test_plan_params_inputs_and_key(tmp_path: Path, tiny_model_dir: Path) -> None:
    from orchestrator.plan import document
    from orchestrator.plan.graph import compile_graph
    from orchestrator.recipe import load_recipe
    from orchestrator.registry import Registry

    for mode in ("dynamic-int8", "int8"):
        graph = compile_graph([load_recipe(_recipe(tmp_path, tiny_model_dir, mode), Registry())])
        conv, quant = [t for t in graph.tasks() if t.step.startswith("litert")]
        assert conv.params == {"batch": 1, "sequence": 16}  # the longest recipe sequence
        # only full-integer int8 calibrates: only it reads (and keys) the samples and source
        assert sorted(quant.inputs) == (["model", "samples", "source"] if mode == "int8"
                                        else ["model"])
        doc = document(quant, {n: "0" * 64 for n in quant.inputs})
        assert doc["machine"] == {"litert_env": litert_env.fingerprint()}
        parity = next(t for t in graph.tasks() if t.step == "parity" and not t.reference)
        assert document(parity, {n: "0" * 64 for n in parity.inputs})["toolchain"].keys() == {
            "ai-edge-litert"}


needs_env = pytest.mark.skipif(litert_env.problem("litert") is not None,
                               reason="no LiteRT environment: make litert-env")


@pytest.fixture(scope="module")
def edge_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the three modes: the conversion (the slow part) is built once, then a hit."""
    return tmp_path_factory.mktemp("edge-cache")


@needs_env
@pytest.mark.parametrize("mode", ["dynamic-int8", "int8", "fp16"])
def test_tiny_bert_converts_quantizes_and_passes_parity(mode: str, tmp_path: Path,
                                                        tiny_model_dir: Path, edge_cache: Path,
                                                        capsys) -> None:  # type: ignore[no-untyped-def]
    from orchestrator.cli import main

    out = tmp_path / "out"
    rc = main([str(_recipe(tmp_path, tiny_model_dir, mode)), "--cache", str(edge_cache),
               "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0, summary
    m = json.loads((out / "edge/edge-int8/manifest.json").read_text())
    assert m["status"] == "ok"
    parity = m["checks"]["parity"]
    assert parity["precision"] == ("fp16" if mode == "fp16" else "int8")
    assert parity["runtime"]["runtime"] == "litert"
    assert parity["runtime"]["static_shape"] == [1, 16]
    assert parity["mean_cosine"] >= 0.9
    quant = m["steps"][1]["metrics"]
    assert quant["mode"] == mode and (("calibration_batches" in quant) == (mode == "int8"))
    assert (out / "edge/edge-int8/model.tflite").read_bytes()[4:8] == b"TFL3"
    assert os.path.getsize(out / "edge/edge-int8/model.tflite") < m["steps"][0]["outputs"]["model"]["size"]
