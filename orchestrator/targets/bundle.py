"""A target folder as a deployable bundle, laid out as a Hugging Face model folder, so the
ecosystem's loaders take it as it is and each engine is shipped once:

- the engine at the top under the names the loaders look for first: `model.onnx` (Optimum's
  `ONNX_WEIGHTS_NAME`; sentence-transformers' ONNX backend takes a top-level `model.onnx` before
  `onnx/model.onnx`), or `openvino_model.xml` + `openvino_model.bin` (optimum-intel's
  `OV_XML_FILE_NAME` and the `.bin` beside it; sentence-transformers' OpenVINO backend takes
  them there too). The IR the OpenVINO steps make (`ir/model.xml` + `ir/model.bin`) is placed
  under those names: its two files become the target's artifacts, the same blobs, no copy;
- `config.json` and the model source's tokenizer files at the top (what `AutoConfig` and
  `AutoTokenizer` read from the folder), `tokenizer_config.json` with `model_max_length` set to
  the model's maximum sequence length;
- for a sentence-transformers source (it has `modules.json`): `modules.json`,
  `sentence_bert_config.json` (`max_seq_length`), `config_sentence_transformers.json` and each
  module's folder as the source has it (`1_Pooling/`, `2_Normalize/`, ...), so
  `SentenceTransformer(DIR, backend="onnx" | "openvino")` pools and normalizes as the original;
- `signature.json`: the engine's inputs and outputs (names, dtypes, shapes, dynamic axes named),
  the task, the maximum sequence length (and which source file gave it), the post-processing the
  parity check applied (mean pooling over the attention mask + L2 normalization for
  feature-extraction; logits for classification) and the clients that load the folder;
- `load_example.py`: a short script that loads the engine with its runtime, tokenizes a text
  (truncated to the maximum length) and applies the post-processing
  (`python load_example.py "some text"`).

The files are blobs in the cache like the engine, listed in the manifest's `bundle` section, so
the folder is materialized (and swapped in) whole and `deploy-build verify DIR` can check it.
The signature is read from the engine once per engine digest (the `onnx` package imported then;
an OpenVINO IR's XML is read with the standard library) and remembered in the cache, so a cached
build imports nothing for it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator.hashing import atomic_write
from orchestrator.runtime.hf import max_sequence_length
from orchestrator.targets.manifest import MANIFEST, RUN_LOG, dumps

TOKENIZER_FILES = ("added_tokens.json", "merges.txt", "sentencepiece.bpe.model",
                   "special_tokens_map.json", "spiece.model", "tokenizer.json",
                   "tokenizer_config.json", "vocab.json", "vocab.txt")
SIGNATURE = "signature.json"
EXAMPLE = "load_example.py"
MEMO = "signatures"
OV_XML, OV_BIN = "openvino_model.xml", "openvino_model.bin"  # optimum-intel's names
ST_MODULES, ST_CONFIG = "modules.json", "sentence_bert_config.json"
RESERVED = {SIGNATURE, EXAMPLE, MANIFEST, RUN_LOG}  # never a source module's folder
CLIENT_CLASS = {"feature-extraction": "FeatureExtraction",
                "sequence-classification": "SequenceClassification",
                "token-classification": "TokenClassification", "fill-mask": "MaskedLM"}


def postprocess(task: str) -> dict[str, Any]:
    if task == "feature-extraction":
        return {"output": "last_hidden_state", "steps": ["mean_pool(attention_mask)", "l2_normalize"],
                "gives": "sentence embedding, one unit vector per text"}
    per_token = task == "token-classification"
    return {"output": "logits", "steps": ["argmax(-1)"],
            "gives": "a label id per token" if per_token else "a label id per text"}


RUNTIMES = {"onnx": "onnxruntime", "openvino-ir": "openvino"}  # engine format -> its runtime


def engine_of(manifest: dict[str, Any], fmt: str) -> tuple[str, dict[str, Any]] | None:
    """(runtime, artifact) of the target's engine, when it is one a bundle is made for."""
    runtime = RUNTIMES.get(fmt)
    models = [a for a in manifest.get("artifacts", []) if a.get("name") == "model"]
    if runtime is None or len(models) != 1:
        return None
    return runtime, models[0]


def _onnx_signature(path: Path) -> dict[str, Any]:
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}

    def one(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in t.shape.dim]
        return {"name": v.name, "dtype": str(helper.tensor_dtype_to_np_dtype(t.elem_type)),
                "shape": dims, "dynamic_axes": {str(i): d for i, d in enumerate(dims)
                                                if isinstance(d, str) or d is None}}

    return {"inputs": [one(v) for v in model.graph.input if v.name not in inits],
            "outputs": [one(v) for v in model.graph.output]}


OV_TYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "i64": "int64", "i32": "int32",
            "i8": "int8", "u8": "uint8", "boolean": "bool", "fp32": "float32", "fp16": "float16"}


def _ov_port(port: Any, name: str, dtype: str) -> dict[str, Any]:
    dims = [None if int(d.text or -1) < 0 else int(d.text or 0) for d in port.findall("dim")]
    return {"name": name, "dtype": OV_TYPES.get(dtype.lower(), dtype.lower()), "shape": dims,
            "dynamic_axes": {str(i): None for i, d in enumerate(dims) if d is None}}


def _ov_signature(xml: Path) -> dict[str, Any]:
    """Read from the IR's XML with the standard library: importing OpenVINO in the build's own
    process would cost its start-up and write its telemetry."""
    from xml.etree import ElementTree

    layers = list(ElementTree.parse(xml).getroot().iter("layer"))
    inputs, outputs = [], []
    for layer in layers:
        kind, layer_name = layer.get("type"), layer.get("name") or ""
        if kind == "Parameter":
            port = layer.find("output/port")
            port = port if port is not None else ElementTree.Element("port")
            data = layer.find("data")
            dtype = (data.get("element_type") if data is not None else None) or "f32"
            inputs.append(_ov_port(port, (port.get("names") or layer_name).split(",")[0], dtype))
        elif kind == "Result":
            port = layer.find("input/port")
            port = port if port is not None else ElementTree.Element("port")
            name = layer.get("output_names") or layer_name.split("/sink_port")[0]
            outputs.append(_ov_port(port, name.split(",")[0], port.get("precision") or "f32"))
    return {"inputs": inputs, "outputs": outputs}


def signature(store: Any, runtime: str, artifact: dict[str, Any]) -> dict[str, Any]:
    """The engine's inputs and outputs, read once per engine digest and remembered."""
    memo = Path(store.root) / MEMO / f"{artifact['digest']}.json"
    try:
        return dict(json.loads(memo.read_text()))
    except (OSError, ValueError):
        pass
    from orchestrator.store.base import Blob

    store.ensure(Blob(artifact["kind"], artifact["digest"], artifact["size"]))  # a remote hit
    if runtime == "onnxruntime":
        sig = _onnx_signature(store.blob_path(artifact["digest"]))
    else:
        files = store.tree_files(artifact["digest"])
        xml = next(r for r in sorted(files) if r.endswith(".xml"))
        sig = _ov_signature(store.blob_path(files[xml][0]))
    memo.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(memo, json.dumps(sig, sort_keys=True))
    return sig


def place_engine(manifest: dict[str, Any], store: Any, runtime: str,
                 artifact: dict[str, Any]) -> str:
    """Where the engine lies in the folder. An OpenVINO IR folder (one .xml and its .bin) is
    placed at the top as ``openvino_model.xml`` + ``openvino_model.bin``: its two files replace
    the folder among the artifacts (the same blobs; the step's output, a folder, keeps its digest
    in ``steps``). Any other engine stays where its step put it."""
    if runtime != "openvino" or artifact.get("kind") != "tree":
        return str(artifact["path"])
    files = store.tree_files(artifact["digest"])
    xml = [r for r in files if r.endswith(".xml") and "/" not in r]
    weights = xml[0][:-len(".xml")] + ".bin" if len(xml) == 1 else ""
    if len(files) != 2 or weights not in files:
        return str(artifact["path"])
    (xd, xs), (bd, bs) = files[xml[0]], files[weights]
    at = manifest["artifacts"].index(artifact)
    manifest["artifacts"][at:at + 1] = [
        {"name": "model", "path": OV_XML, "digest": xd, "size": xs, "kind": "file"},
        {"name": "model-weights", "path": OV_BIN, "digest": bd, "size": bs, "kind": "file"}]
    return OV_XML


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()


def _safe(rel: Any) -> bool:
    """A module folder of the source that may be placed in the bundle: relative, no '..',
    nothing hidden, not one of the bundle's own names."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel:
        return False
    parts = PurePosixPath(rel).parts
    return all(p not in ("", ".", "..") and not p.startswith(".") for p in parts) \
        and parts[0] not in RESERVED


class _Files:
    """The bundle's files by path, stored as blobs: the source's own files hashed once (a stat
    cache), files the bundle writes or rewrites stored from bytes. A path already taken (by an
    artifact, by a file placed before, or the manifest's) is not placed twice."""

    def __init__(self, store: Any, taken: set[str]) -> None:
        from orchestrator.plan.sources import StatCache

        self.store, self.digests = store, StatCache(store.index)
        self.blobs: dict[str, Any] = {}
        self.taken = taken | {MANIFEST, RUN_LOG}

    def _free(self, rel: str) -> bool:
        return rel not in self.taken and rel not in self.blobs

    def file(self, rel: str, path: Path) -> None:
        if self._free(rel) and path.is_file():
            known = self.digests.file_digest(path, "model source")
            self.blobs[rel] = self.store.put_file(path, known)

    def data(self, rel: str, data: bytes) -> None:
        if self._free(rel):
            self.blobs[rel] = self.store.put_bytes(data)

    def json(self, rel: str, path: Path, changes: dict[str, Any]) -> None:
        """The source's JSON file with ``changes`` applied (the file as it is when it is not a
        JSON object)."""
        data = _read_json(path)
        if isinstance(data, dict):
            self.data(rel, _json_bytes({**data, **changes}))
        else:
            self.file(rel, path)


def _sentence_transformers(files: _Files, source: Path, limit: int | None) -> None:
    """modules.json, sentence_bert_config.json (max_seq_length), config_sentence_transformers.json
    and the folders of the modules after the Transformer (whose files are the bundle's top level,
    path "", as in the sources the export steps read)."""
    modules = _read_json(source / ST_MODULES)
    for m in modules if isinstance(modules, list) else []:
        path = m.get("path") if isinstance(m, dict) else None
        if not _safe(path) or not (source / str(path)).is_dir():
            continue
        for f in sorted((source / str(path)).rglob("*")):
            rel = f.relative_to(source).as_posix()
            if _safe(rel) and f.is_file() and not f.is_symlink():
                files.file(rel, f)
    files.file(ST_MODULES, source / ST_MODULES)
    files.file("config_sentence_transformers.json", source / "config_sentence_transformers.json")
    config = _read_json(source / ST_CONFIG)
    config = config if isinstance(config, dict) else {"do_lower_case": False}
    if limit is not None:
        config["max_seq_length"] = limit
    files.data(ST_CONFIG, _json_bytes(config))


def clients(runtime: str, task: str, st: bool) -> list[str]:
    """How the folder loads with the ecosystem's clients, as code a reader can paste."""
    kind = CLIENT_CLASS.get(task)
    out = []
    if kind is not None:
        out.append(f"optimum.onnxruntime.ORTModelFor{kind}.from_pretrained(DIR)" if runtime ==
                   "onnxruntime" else f"optimum.intel.OVModelFor{kind}.from_pretrained(DIR)")
    if st and task == "feature-extraction":
        backend = "onnx" if runtime == "onnxruntime" else "openvino"
        out.append(f'sentence_transformers.SentenceTransformer(DIR, backend="{backend}")')
    return out


def add_bundle(manifest: dict[str, Any], store: Any, source: Path | None, fmt: str) -> None:
    """Add the bundle's files (stored as blobs) and its `bundle` section to an ok manifest whose
    engine (of format ``fmt``) is one a bundle is made for (once: a manifest with a bundle is
    left alone)."""
    found = engine_of(manifest, fmt)
    if found is None or manifest.get("status") != "ok" or "bundle" in manifest:
        return
    runtime, artifact = found
    task = manifest["model"]["task"]
    sig = signature(store, runtime, artifact)
    engine = place_engine(manifest, store, runtime, artifact)
    src = source if source is not None and source.is_dir() else None
    limit = max_sequence_length(src) if src is not None else None
    st = src is not None and (src / ST_MODULES).is_file()
    doc = {"runtime": runtime, "engine": engine, "task": task, **sig,
           "max_length": limit[0] if limit else None,
           "max_length_from": limit[1] if limit else None,
           "postprocess": postprocess(task), "clients": clients(runtime, task, st)}
    files = _Files(store, {str(a["path"]).split("/")[0] for a in manifest["artifacts"]})
    files.data(SIGNATURE, dumps(doc).encode())
    files.data(EXAMPLE, resources.files("orchestrator.targets").joinpath(EXAMPLE).read_bytes())
    if src is not None:
        files.file("config.json", src / "config.json")
        for name in TOKENIZER_FILES:
            if name == "tokenizer_config.json" and limit is not None:
                if (src / name).is_file():
                    files.json(name, src / name, {"model_max_length": limit[0]})
            else:
                files.file(name, src / name)
        if st:
            _sentence_transformers(files, src, limit[0] if limit else None)
    listed = [{"name": rel, "path": rel, "digest": b.digest, "size": b.size, "kind": "file"}
              for rel, b in sorted(files.blobs.items())]
    manifest["bundle"] = {"files": listed, "signature": doc}
