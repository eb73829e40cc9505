"""Load this bundle's engine and run it on a text: python load_example.py "some text" [...]

Needs numpy, transformers (for the tokenizer files in this folder) and the engine's runtime
(onnxruntime or openvino). Texts are truncated to the model's maximum sequence length
(signature.json: max_length), as the original model truncates them. Prints JSON: the output's
shape, the tokens each text kept, and the post-processed result, as signature.json describes it
(the same post-processing the parity check applied).

The folder is also a Hugging Face model folder: signature.json's "clients" say which loaders
take it as it is (Optimum, optimum-intel, sentence-transformers).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def load(sig: dict[str, Any]) -> Any:
    """A function from a feed (name -> int64 array) to the engine's first output."""
    engine = HERE / sig["engine"]
    if sig["runtime"] == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(engine), providers=["CPUExecutionProvider"])
        return lambda feed: session.run([sig["outputs"][0]["name"]], feed)[0]
    import openvino as ov

    xml = engine if engine.is_file() else next(engine.glob("*.xml"))
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return lambda feed: compiled(feed)[compiled.output(0)]


def main(texts: list[str]) -> dict[str, Any]:
    import numpy as np
    from transformers import AutoTokenizer

    sig = json.loads((HERE / "signature.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(HERE))
    limit = {"max_length": sig["max_length"]} if sig.get("max_length") else {}
    enc = tokenizer(texts, padding=True, truncation=True, return_tensors="np", **limit)
    names = [i["name"] for i in sig["inputs"]]
    feed = {n: np.asarray(enc[n], dtype=np.int64) for n in names if n in enc}
    if "token_type_ids" in names and "token_type_ids" not in feed:
        feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
    out = np.asarray(load(sig)(feed), dtype=np.float32)
    if "mean_pool(attention_mask)" in sig["postprocess"]["steps"]:
        mask = feed["attention_mask"][..., None].astype(np.float32)
        emb = (out * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        result = emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
    else:
        result = out.argmax(axis=-1)
    return {"output_shape": list(out.shape), "tokens": feed["attention_mask"].sum(axis=1).tolist(),
            "result": result.tolist()}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:] or ["hello world"])))
