"""Target folders are bundles (engine, tokenizer, config, signature, post-processing, a loading
example that runs), laid out as Hugging Face model folders, and `deploy-build verify DIR` checks
one against its manifest. tests/test_bundle_clients.py loads them with the real clients."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from orchestrator.cli import main

RECIPE = """\
name: tiny
model:
  source: @MODEL@
inputs:
  samples: samples.txt
targets:
  ort-fp32:
    steps:
      - export-onnx: {opset: 17}
    checks:
      parity: {}
  openvino-fp32:
    steps:
      - export-onnx: {opset: 17}
      - openvino-convert: {}
    checks:
      parity: {}
"""


def _example(folder: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(folder / "load_example.py"), "hello world",
                           "the quick brown fox"], capture_output=True, text=True, env=env,
                          timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_bundles_load_and_verify(tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "samples.txt").write_text("the quick brown fox\nhello world\n")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE.replace("@MODEL@", str(tiny_model_dir)))
    out = tmp_path / "build"
    assert main([str(recipe), "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    ort = out / "tiny" / "ort-fp32"
    manifest = json.loads((ort / "manifest.json").read_text())
    sig = json.loads((ort / "signature.json").read_text())
    assert sig == manifest["bundle"]["signature"]
    assert [i["name"] for i in sig["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert sig["inputs"][0]["dtype"] == "int64" and sig["inputs"][0]["dynamic_axes"] == {
        "0": "batch", "1": "sequence"}
    assert sig["outputs"][0]["name"] == "last_hidden_state" and sig["outputs"][0]["shape"][2] == 32
    assert sig["postprocess"]["steps"] == ["mean_pool(attention_mask)", "l2_normalize"]
    # the tiny tokenizer sets no limit of its own (1e30): the model's positions are the maximum
    assert sig["max_length"] == 256 and sig["max_length_from"] == "config.json: max_position_embeddings"
    assert sig["clients"] == ["optimum.onnxruntime.ORTModelForFeatureExtraction.from_pretrained(DIR)"]
    assert (ort / "vocab.txt").is_file() and (ort / "tokenizer.json").is_file()
    assert (ort / "config.json").read_bytes() == (tiny_model_dir / "config.json").read_bytes()
    assert json.loads((ort / "tokenizer_config.json").read_text())["model_max_length"] == 256
    assert not (ort / "tokenizer").exists() and not (ort / "modules.json").exists()
    assert sum(a["size"] for a in manifest["artifacts"]) == (ort / "model.onnx").stat().st_size
    # the loading example runs from a copy of the folder (a serving host) and gives unit vectors
    host = tmp_path / "host" / "ort-fp32"
    shutil.copytree(ort, host)
    result = _example(host)
    assert result["output_shape"][0] == 2 and result["output_shape"][2] == 32
    assert result["tokens"] == [4, 6]
    assert all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in result["result"])
    ov_sig = json.loads((out / "tiny" / "openvino-fp32" / "signature.json").read_text())
    # the IR at the top under optimum-intel's names: its two files are the artifacts
    assert ov_sig["runtime"] == "openvino" and ov_sig["engine"] == "openvino_model.xml"
    ov_manifest = json.loads((out / "tiny" / "openvino-fp32" / "manifest.json").read_text())
    assert [(a["name"], a["path"], a["kind"]) for a in ov_manifest["artifacts"]] == [
        ("model", "openvino_model.xml", "file"), ("model-weights", "openvino_model.bin", "file")]
    assert not (out / "tiny" / "openvino-fp32" / "ir").exists()
    assert [(i["name"], i["dtype"], i["shape"]) for i in ov_sig["inputs"]] == [
        (n, "int64", [None, None]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    assert ov_sig["outputs"] == [{"name": "last_hidden_state", "dtype": "float32",
                                  "shape": [None, None, 32], "dynamic_axes": {"0": None, "1": None}}]
    ov = _example(out / "tiny" / "openvino-fp32")
    assert max(abs(a - b) for a, b in zip(ov["result"][0], result["result"][0], strict=True)) < 1e-3
    capsys.readouterr()
    assert main(["verify", str(host)]) == 0
    assert "tiny/ort-fp32: ok" in capsys.readouterr().out
    assert main(["verify", str(out / "tiny" / "openvino-fp32")]) == 0
    # tampering: a changed tokenizer file, an extra file, a changed IR file
    (host / "vocab.txt").write_text("[PAD]\n")
    (host / "notes.txt").write_text("x")
    assert main(["verify", str(host)]) == 2
    text = capsys.readouterr().out
    assert "FAIL tiny/ort-fp32: vocab.txt:" in text
    assert "FAIL tiny/ort-fp32: notes.txt: not in the manifest" in text
    ir = tmp_path / "host" / "openvino-fp32"
    shutil.copytree(out / "tiny" / "openvino-fp32", ir)
    (ir / "openvino_model.xml").write_text((ir / "openvino_model.xml").read_text() + " ")
    assert main(["verify", str(ir)]) == 2
    assert "openvino_model.xml: " in capsys.readouterr().out
    assert main(["verify", str(tmp_path)]) == 1
    assert "holds no manifest.json" in capsys.readouterr().err
    # a no-op build puts the bundle together again without hashing the tokenizer files anew
    hashed: list[str] = []
    import orchestrator.hashing
    import orchestrator.plan.sources
    import orchestrator.store.local

    real = orchestrator.hashing.sha256_file

    def counting(path, *a, **kw):  # type: ignore[no-untyped-def]
        hashed.append(Path(path).name)
        return real(path, *a, **kw)

    for module in (orchestrator.plan.sources, orchestrator.store.local):
        monkeypatch.setattr(module, "sha256_file", counting)
    assert main([str(recipe), "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    assert not {"vocab.txt", "tokenizer.json", "tokenizer_config.json"} & set(hashed), hashed
