"""ort-optimize: ONNX Runtime transformers optimizer (Attention, LayerNorm and GELU fusions).

Attention fuses only on a legacy export with eager attention that onnx-slim has not touched; on
any other graph the step still runs (layer norm and GELU fusions) and warns.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.step import Resources, Step, StepContext

ATTENTION_OPS = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention")


class OrtOptimizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_type: str = Field("bert", description="Optimizer model type (bert, gpt2, bart, t5, ...; "
                            "'bert' covers BERT, RoBERTa, DistilBERT, MiniLM and similar encoders).")
    num_heads: int = Field(0, ge=0, description="Attention heads; 0 reads them from the graph.")
    hidden_size: int = Field(0, ge=0, description="Hidden size; 0 reads it from the graph.")
    opt_level: Literal[0, 1, 2, 99] = Field(0, description="ONNX Runtime graph optimization level run "
                           "after the fusions (0: only the Python fusions, as the ONNX Runtime docs "
                           "recommend for portable models; 1, 2 or 99 also run ONNX Runtime's).")
    use_gpu: bool = Field(False, description="Optimize for the CUDA execution provider.")
    float16: bool = Field(False, description="Convert the optimized model to float16 "
                          "(inputs and outputs stay float32); for GPUs.")


class OrtOptimize(Step[OrtOptimizeParams]):
    name = "ort-optimize"
    version = "2"
    description = ("Fuse Attention, SkipLayerNormalization, EmbedLayerNormalization and GELU with "
                   "the ONNX Runtime transformers optimizer.")
    inputs = ("model",)
    outputs = {"model": "model.onnx"}
    input_formats = {"model": ("onnx",)}
    output_formats = {"model": "onnx"}
    resources = Resources(cpu=1, memory_gb=4)
    toolchain = ("onnxruntime", "onnx")
    preload = ("onnx",)

    def run(self, ctx: StepContext[OrtOptimizeParams]) -> dict[str, Any]:
        import onnx

        p: OrtOptimizeParams = ctx.params
        src = ctx.input("model")
        before = onnx.load(str(src))
        heads, hidden = p.num_heads, p.hidden_size
        if not heads or not hidden:
            found_heads, found_hidden = detect_heads(before)
            hidden = hidden or found_hidden
            heads = heads or (found_heads if hidden == found_hidden else 0)
        out = ctx.output("model")
        opt = self._optimize(src, out, p, heads, hidden, attention=True)
        problem = disagreement(src, out, p.float16)
        if problem:
            # e.g. a head-pruned model whose layers have fewer heads than hidden/head_size: the
            # fused Attention would compute garbage. Never ship that: fuse everything else.
            ctx.warn(f"the Attention fusion changed the model's outputs ({problem}); "
                     "saved without it (set num_heads/hidden_size if the model has unusual heads)")
            opt = self._optimize(src, out, p, heads, hidden, attention=False)
            problem = disagreement(src, out, p.float16)
            if problem:
                raise RuntimeError(f"the optimized model disagrees with its input ({problem}); "
                                   "try opt_level: 0 or leave ort-optimize out for this model")
        fused = {k: int(v) for k, v in sorted(opt.get_fused_operator_statistics().items())
                 if int(v) > 0}
        if not any(fused.get(op, 0) for op in ATTENTION_OPS) and not ctx.warnings:
            ctx.warn("attention was not fused: " + _why(before, heads, hidden))
        return {
            "fused": fused,
            "num_heads": heads,
            "hidden_size": hidden,
            "nodes_before": len(before.graph.node),
            "nodes_after": len(opt.model.graph.node),
        }


    @staticmethod
    def _optimize(src: Any, out: Any, p: OrtOptimizeParams, heads: int, hidden: int,
                  attention: bool) -> Any:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        options = FusionOptions(p.model_type)
        options.enable_attention = attention
        opt = optimize_model(str(src), model_type=p.model_type, num_heads=heads,
                             hidden_size=hidden, opt_level=p.opt_level, use_gpu=p.use_gpu,
                             only_onnxruntime=False, optimization_options=options)
        if p.float16:
            opt.convert_float_to_float16(keep_io_types=True)
        opt.save_model_to_file(str(out), use_external_data_format=False)
        return opt


def disagreement(before: Any, after: Any, float16: bool) -> str | None:
    """Run both models on one small input; why they disagree, or None. A fusion must not change
    what the model computes (float16 output is only required to run)."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(str(before), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {}
    for i in reference.get_inputs():
        if i.name == "input_ids":
            feed[i.name] = rng.integers(1, 50, size=(2, 12), dtype=np.int64)
        elif i.name == "attention_mask":
            feed[i.name] = np.array([[1] * 12, [1] * 7 + [0] * 5], dtype=np.int64)
        else:
            feed[i.name] = np.zeros((2, 12), dtype=np.int64)
    ref = reference.run(None, feed)[0]
    try:  # a broken fused graph fails in the runtime's own checks, or computes other numbers
        fused = ort.InferenceSession(str(after), opts, providers=["CPUExecutionProvider"])
        got = fused.run(None, {k: v for k, v in feed.items()
                               if k in {i.name for i in fused.get_inputs()}})[0]
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    if float16:
        return None
    diff = float(np.abs(ref - got).max())
    return None if diff <= 1e-3 * max(1.0, float(np.abs(ref).max())) else f"max abs diff {diff:.3g}"


def detect_heads(model: Any) -> tuple[int, int]:
    """(num_heads, hidden_size) read from the graph, (0, 0) when not found.

    Recent transformers reshape Q/K/V to (batch, seq, -1, head_size), which the optimizer's own
    detection does not handle; head_size is the constant after -1 in those reshapes and
    hidden_size the width of the LayerNormalization scales."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    wrapped = OnnxModel(model)
    heads: Counter[int] = Counter()
    widths: Counter[int] = Counter()
    for node in model.graph.node:
        if node.op_type == "Concat" and len(node.input) == 4:
            a, b = (wrapped.get_constant_value(x) for x in node.input[2:])
            if a is not None and b is not None and a.size == b.size == 1 \
                    and int(a.flat[0]) == -1 and int(b.flat[0]) > 0:
                heads[int(b.flat[0])] += 1
        elif node.op_type == "LayerNormalization" and len(node.input) > 1:
            scale = wrapped.get_constant_value(node.input[1])
            if scale is not None and scale.ndim == 1 and scale.size > 0:
                widths[int(scale.shape[0])] += 1
    if not heads or not widths:
        return 0, 0
    head_size, hidden = heads.most_common(1)[0][0], widths.most_common(1)[0][0]
    return (hidden // head_size, hidden) if hidden % head_size == 0 else (0, 0)


def _why(model: Any, num_heads: int, hidden_size: int) -> str:
    """The likely cause of a missing Attention fusion, with what to do."""
    if not num_heads or not hidden_size:
        return ("num_heads and hidden_size could not be read from the graph; set num_heads and "
                "hidden_size to the model's num_attention_heads and hidden_size")
    if model.graph.node and not any(n.name.startswith("/") for n in model.graph.node):
        return ("the model looks like a dynamo export; re-export with export-onnx "
                "exporter: legacy and attn_implementation: eager")
    return ("the graph does not have the attention pattern the optimizer knows; the usual causes "
            "are an export with attn_implementation: sdpa (re-export with export-onnx "
            "attn_implementation: eager, exporter: legacy), onnx-slim before ort-optimize (move "
            "it after), or a model_type that does not match the model")
