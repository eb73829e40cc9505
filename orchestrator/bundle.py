"""A target folder as a deployable bundle: the engine plus what a serving host needs beside it.

- `tokenizer/`: the model source's tokenizer files;
- `signature.json`: the engine's inputs and outputs (names, dtypes, shapes, dynamic axes named),
  the task, and the post-processing the parity check applied (mean pooling over the attention
  mask + L2 normalization for feature-extraction; logits for classification);
- `load_example.py`: a short script that loads the engine with its runtime, tokenizes a text and
  applies the post-processing (`python load_example.py "some text"`).

The files are blobs in the cache like the engine, listed in the manifest's `bundle` section, so
the folder is materialized (and swapped in) whole and `deploy-build verify DIR` can check it.
The signature is read from the engine once per engine digest (the `onnx` package imported then;
an OpenVINO IR's XML is read with the standard library) and remembered in the cache, so a cached
build imports nothing for it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from orchestrator.manifest import dumps

TOKENIZER_FILES = ("added_tokens.json", "merges.txt", "sentencepiece.bpe.model",
                   "special_tokens_map.json", "spiece.model", "tokenizer.json",
                   "tokenizer_config.json", "vocab.json", "vocab.txt")
SIGNATURE = "signature.json"
EXAMPLE = "load_example.py"
MEMO = "signatures"


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
    tmp = memo.with_name(f".{memo.name}.tmp")
    tmp.write_text(json.dumps(sig, sort_keys=True))
    tmp.replace(memo)
    return sig


def _file(name: str, blob: Any) -> dict[str, Any]:
    return {"name": name, "path": name, "digest": blob.digest, "size": blob.size, "kind": "file"}


def add_bundle(manifest: dict[str, Any], store: Any, source: Path | None, fmt: str) -> None:
    """Add the bundle's files (stored as blobs) and its `bundle` section to an ok manifest whose
    engine (of format ``fmt``) is one a bundle is made for."""
    found = engine_of(manifest, fmt)
    if found is None or manifest.get("status") != "ok":
        return
    runtime, artifact = found
    task = manifest["model"]["task"]
    doc = {"runtime": runtime, "engine": artifact["path"], "task": task,
           **signature(store, runtime, artifact), "postprocess": postprocess(task)}
    files = []
    if source is not None and source.is_dir():
        from orchestrator.sources import StatCache

        digests = StatCache(store.index)  # the source's own files: hashed once, not per build
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                known = digests.file_digest(source / name, "tokenizer")
                files.append(_file(f"tokenizer/{name}", store.put_file(source / name, known)))
    files.append(_file(SIGNATURE, store.put_bytes(dumps(doc).encode())))
    example = resources.files("orchestrator").joinpath("bundle_example.py").read_bytes()
    files.append(_file(EXAMPLE, store.put_bytes(example)))
    manifest["bundle"] = {"files": files, "signature": doc}
