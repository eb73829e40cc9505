"""onnx-slim: onnxslim graph simplification (constant folding, dead code, shape and op fusions).

Run it after ort-optimize, never before: slimming rewrites the attention subgraph so the ONNX
Runtime optimizer no longer recognizes it, and Attention does not fuse (measured on MiniLM).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.step import Resources, Step, StepContext


class OnnxSlimParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    no_shape_infer: bool = Field(False, description="Skip shape inference (for graphs whose "
                                 "custom ops ONNX shape inference cannot handle).")
    skip_fusion_patterns: list[str] | None = Field(
        None, description="onnxslim fusion patterns to leave out (e.g. FusionGelu).")


class OnnxSlim(Step[OnnxSlimParams]):
    name = "onnx-slim"
    version = "1"
    description = ("Simplify an ONNX graph with onnxslim (run it after ort-optimize: before it, "
                   "it blocks the Attention fusion).")
    inputs = ("model",)
    outputs = {"model": "model.onnx"}
    input_formats = {"model": ("onnx",)}
    output_formats = {"model": "onnx"}
    resources = Resources(cpu=1, memory_gb=4)
    toolchain = ("onnxslim", "onnx")
    preload = ("onnx",)

    def run(self, ctx: StepContext[OnnxSlimParams]) -> dict[str, Any]:
        import onnx
        import onnxslim

        p: OnnxSlimParams = ctx.params
        model = onnx.load(str(ctx.input("model")))
        nodes_before = len(model.graph.node)
        kwargs: dict[str, Any] = {"no_shape_infer": p.no_shape_infer}
        if p.skip_fusion_patterns:
            kwargs["skip_fusion_patterns"] = list(p.skip_fusion_patterns)
        slim = onnxslim.slim(model, **kwargs)
        if slim is None:
            raise RuntimeError("onnxslim returned no model; run `onnxslim IN.onnx OUT.onnx` on "
                               "the input to see why, or drop onnx-slim from the target")
        onnx.save(slim, str(ctx.output("model")))
        return {"nodes_before": nodes_before, "nodes_after": len(slim.graph.node)}
