"""export-onnx: a Hugging Face model folder -> one ONNX file with named dynamic batch/sequence axes.

The legacy TorchScript-based exporter with eager attention (the defaults) is the only combination
whose graph the ONNX Runtime transformers optimizer can fuse into Attention nodes; the dynamo
exporter and sdpa attention give graphs that fuse only layer norms and GELU.
"""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.runtime import hf
from orchestrator.step import Resources, Step, StepContext


class ExportOnnxParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    opset: int = Field(17, ge=14, le=23, description="ONNX opset version to export to "
                       "(the dynamo exporter needs 18 or more).")
    exporter: Literal["legacy", "dynamo"] = Field(
        "legacy", description="'legacy' (torch.onnx TorchScript exporter; its graph fuses in "
        "ort-optimize) or 'dynamo' (torch.export based; Attention does not fuse in ort-optimize).")
    attn_implementation: Literal["eager", "sdpa"] = Field(
        "eager", description="Attention implementation of the PyTorch model while exporting; "
        "'eager' is needed for the ONNX Runtime optimizer to fuse Attention.")


class ExportOnnx(Step[ExportOnnxParams]):
    name = "export-onnx"
    version = "1"
    description = ("Export a Hugging Face model folder to ONNX (inputs input_ids, attention_mask, "
                   "token_type_ids; dynamic batch and sequence axes).")
    inputs = ("model",)
    outputs = {"model": "model.onnx"}
    input_formats = {"model": ("hf-model",)}
    output_formats = {"model": "onnx"}
    resources = Resources(cpu=2, memory_gb=4)
    toolchain = ("torch", "transformers", "onnx", "onnxscript")
    preload = ("onnx", "torch", "transformers", "transformers.modeling_utils")

    def run(self, ctx: StepContext[ExportOnnxParams]) -> dict[str, Any]:
        import onnx
        import torch

        p: ExportOnnxParams = ctx.params
        if p.exporter == "dynamo" and p.opset < 18:
            raise ValueError(f"exporter 'dynamo' needs opset 18 or more, got opset {p.opset}; "
                             "set opset: 18 (or use exporter: legacy)")
        torch.set_num_threads(max(1, ctx.threads))
        folder = ctx.input("model")
        model = hf.load_model(folder, ctx.model.task, ctx.model.trust_remote_code,
                              attn_implementation=p.attn_implementation)
        tokenizer, enc = hf.example_inputs(folder, ctx.model.trust_remote_code)
        names = export_input_names(model, tokenizer)
        outs = hf.output_names(ctx.model.task)
        args = tuple(enc[n] for n in names)
        wrapper = hf.positional_wrapper(model, names, outs)
        with tempfile.TemporaryDirectory(prefix="export-onnx-") as tmp:
            raw = Path(tmp) / "model.onnx"
            with torch.no_grad():
                if p.exporter == "legacy":
                    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, *outs]}
                    torch.onnx.export(wrapper, args, str(raw), input_names=names,
                                      output_names=outs, dynamic_axes=axes,
                                      opset_version=p.opset, do_constant_folding=True,
                                      dynamo=False)
                else:
                    batch = torch.export.Dim("batch")
                    seq = torch.export.Dim("sequence")
                    shapes = {"args": tuple({0: batch, 1: seq} for _ in names)}
                    program = torch.onnx.export(wrapper, args, input_names=names,
                                                output_names=outs, dynamic_shapes=shapes,
                                                opset_version=p.opset, dynamo=True)
                    if program is None:
                        raise RuntimeError("the dynamo exporter returned no program; "
                                           "use exporter: legacy")
                    program.save(str(raw))
            proto = onnx.load(str(raw))  # pulls in any external data the exporter wrote
        normalize(proto)
        out = ctx.output("model")
        try:
            onnx.save(proto, str(out))
        except ValueError as e:
            raise RuntimeError(f"the exported model does not fit in one ONNX file ({e}); models "
                               "over 2 GiB are not supported by export-onnx") from None
        onnx.checker.check_model(str(out))
        n_params = sum(int(t.numel()) for t in model.parameters())
        return {
            "exporter": p.exporter,
            "opset": _opset(proto),
            "nodes": len(proto.graph.node),
            "inputs": [i.name for i in proto.graph.input],
            "outputs": [o.name for o in proto.graph.output],
            "parameters": n_params,
        }


def export_input_names(model: Any, tokenizer: Any) -> list[str]:
    """input_ids, attention_mask and token_type_ids, less those the model's forward does not take
    (or, for token_type_ids, that the tokenizer does not produce)."""
    accepted = set(inspect.signature(model.forward).parameters)
    produced = set(tokenizer("a", return_tensors="pt").keys())
    names = [n for n in hf.input_names() if n in accepted and n in produced]
    missing = [n for n in ("input_ids", "attention_mask") if n not in names]
    if missing:
        raise RuntimeError(f"the model or its tokenizer does not use {missing}; export-onnx only "
                           "supports models fed by input_ids and attention_mask")
    return names


def normalize(proto: Any) -> None:
    """Drop doc strings (they may hold source locations). The producer stays 'pytorch': the ONNX
    Runtime optimizer checks it. Both exporters were byte-deterministic with this (measured)."""
    proto.doc_string = ""
    proto.graph.doc_string = ""
    for node in proto.graph.node:
        node.doc_string = ""
    for f in proto.functions:
        f.doc_string = ""
        for node in f.node:
            node.doc_string = ""


def _opset(proto: Any) -> int:
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
