"""The LiteRT jobs that run inside the LiteRT environment (litert-torch, ai-edge-quantizer), not
the project's: this file imports nothing from orchestrator, only the standard library at the top,
so it runs under that environment's own pydantic and typing_extensions.

    python litert_job.py '{"job": "convert", ...}'   ->  one JSON line of metrics on stdout
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def convert(spec: dict[str, Any]) -> dict[str, Any]:
    """The Hugging Face model -> a .tflite with one static [batch, sequence] signature taking
    int32 input_ids and attention_mask (LiteRT refuses int64) and giving last_hidden_state."""
    import litert_torch
    import torch
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_pretrained(spec["source"], attn_implementation="eager").eval().float()

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            out = self.model(input_ids=input_ids.long(), attention_mask=attention_mask.long())
            return out.last_hidden_state

    b, s = spec["batch"], spec["sequence"]
    ids = torch.ones((b, s), dtype=torch.int32)
    mask = torch.ones((b, s), dtype=torch.int32)
    edge = litert_torch.convert(Wrapper().eval(), (ids, mask))
    edge.export(spec["out"])
    return {"batch": b, "sequence": s, "input_dtype": "int32",
            "bytes": Path(spec["out"]).stat().st_size}


def _calibration(spec: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The recipe's samples, tokenized at the model's static shape, by signature."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    from transformers import AutoTokenizer

    interp = Interpreter(model_path=spec["model"])
    sig_key = next(iter(interp.get_signature_list()))
    names = interp.get_signature_list()[sig_key]["inputs"]
    tok = AutoTokenizer.from_pretrained(spec["source"])
    texts = [t for t in Path(spec["samples"]).read_text().splitlines() if t.strip()]
    details = interp.get_signature_runner(sig_key).get_input_details()
    b, s = (int(x) for x in details[names[0]]["shape"])
    rows = []
    for i in range(0, min(len(texts), spec["max_samples"]) - b + 1, b):
        enc = tok(texts[i:i + b], padding="max_length", truncation=True, max_length=s,
                  return_tensors="np")
        arrays = [enc["input_ids"], enc["attention_mask"]]  # the signature's order (args_0, 1)
        rows.append({n: np.asarray(a, dtype=np.int32) for n, a in zip(names, arrays, strict=True)})
    return {sig_key: rows}


def quantize(spec: dict[str, Any]) -> dict[str, Any]:
    """dynamic int8 (int8 weights, activations quantized at run time), full-integer int8
    (static int8 weights and activations, calibrated on the samples: what an Edge TPU compiler
    takes) or fp16 weights."""
    from ai_edge_quantizer import quantizer, recipe, recipe_manager

    mode = spec["mode"]
    qt = quantizer.Quantizer(spec["model"])
    if mode == "dynamic-int8":
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    elif mode == "int8":
        qt.load_quantization_recipe(recipe.static_wi8_ai8())
    else:
        rm = recipe_manager.RecipeManager()
        rm.add_weight_only_config(regex=".*", operation_name=recipe.TFLOperationName.ALL_SUPPORTED,
                                  num_bits=16, algorithm_key=recipe.AlgorithmName.FLOAT_CASTING)
        qt.load_quantization_recipe(rm.get_quantization_recipe())
    extra: dict[str, Any] = {}
    if mode == "int8":
        data = _calibration(spec)
        extra["calibration_batches"] = sum(len(v) for v in data.values())
        result = qt.quantize(qt.calibrate(data, num_threads=spec.get("threads", 1)))
    else:
        result = qt.quantize()
    result.export_model(spec["out"], overwrite=True)
    return {"mode": mode, "bytes": Path(spec["out"]).stat().st_size, **extra}


JOBS = {"convert": convert, "quantize": quantize}

if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    metrics = JOBS[job["job"]](job)
    print("LITERT-RESULT " + json.dumps(metrics, sort_keys=True), flush=True)
