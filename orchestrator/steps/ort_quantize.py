"""ort-quantize: ONNX Runtime int8 quantization (dynamic or static QDQ) or float16 conversion.

Dynamic int8 with per-channel weights is the accurate default (per-tensor loses real accuracy on
MiniLM). It works on ort-optimize's fused graphs (DefaultTensorType is set for that).
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.runtime import hf
from orchestrator.step import PlanContext, Planned, Resources, Step, StepContext

QUANT_OP = re.compile(r"(?i:quant)|Integer|^Q[A-Z]|^Cast$")
# What static mode quantizes by default: ops on the attention-mask path (Add, Where, Softmax)
# hold -3.4e38 and break entropy/percentile calibration and cost accuracy.
STATIC_OPS = ("MatMul", "Attention")


class OrtQuantizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["dynamic", "static", "fp16"] = Field(
        "dynamic", description="'dynamic' (int8 weights, activations quantized at run time), "
        "'static' (int8 QDQ calibrated on the recipe's samples) or 'fp16' (float16 weights).")
    weight_type: Literal["int8", "uint8"] = Field("int8", description="int8 data type of weights.")
    activation_type: Literal["int8", "uint8"] = Field(
        "int8", description="int8 data type of activations (static mode only).")
    per_channel: bool = Field(True, description="One scale per output channel (per-tensor, "
                              "False, costs accuracy on transformer weights).")
    reduce_range: bool = Field(False, description="7-bit weights (for old CPUs without VNNI; "
                               "costs accuracy).")
    calibration_samples: int = Field(64, ge=1, description="Samples used to calibrate (static).")
    calibrate_method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="How static mode picks activation ranges.")
    exclude_ffn_output: bool = Field(
        True, description="Static mode: keep the MatMuls fed by GELU (the feed-forward output "
        "projections, whose inputs have large outliers) in float; quantizing them costs accuracy "
        "(MiniLM cosine 0.94 instead of 0.99).")
    op_types: list[str] | None = Field(
        None, description="Only quantize these operator types (default: every type ONNX Runtime "
        "can for dynamic, MatMul and Attention for static).")


STATIC_ONLY = ("activation_type", "calibration_samples", "calibrate_method", "exclude_ffn_output")
WEIGHT_ONLY = ("weight_type", "per_channel", "reduce_range", "op_types")


class OrtQuantize(Step[OrtQuantizeParams]):
    name = "ort-quantize"
    version = "1"
    description = "Quantize an ONNX model with ONNX Runtime (dynamic or static int8, or fp16)."
    inputs = ("model", "source", "samples")
    outputs = {"model": "model.onnx"}
    input_formats = {"model": ("onnx",)}
    output_formats = {"model": "onnx"}
    resources = Resources(cpu=1, memory_gb=4)
    toolchain = ("onnxruntime", "onnx", "onnxconverter-common")
    preload = ("onnx",)

    @classmethod
    def plan(cls, params: OrtQuantizeParams, at: PlanContext) -> Planned[OrtQuantizeParams]:
        """Only static quantization calibrates (reads the samples) and uses the calibration
        params; fp16 uses no weight params either."""
        if params.mode == "static":
            return cls.planned(params)
        unused = STATIC_ONLY + WEIGHT_ONLY if params.mode == "fp16" else STATIC_ONLY
        return cls.planned(params, inputs=("model",), unused=unused)

    def run(self, ctx: StepContext[OrtQuantizeParams]) -> dict[str, Any]:
        import onnx

        p: OrtQuantizeParams = ctx.params
        src, out = ctx.input("model"), ctx.output("model")
        if p.mode == "dynamic":
            _dynamic(p, src, out)
        elif p.mode == "static":
            _static(p, src, out, ctx)
        else:
            _fp16(src, out)
        before = Counter(n.op_type for n in onnx.load(str(src), load_external_data=False).graph.node)
        after = Counter(n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node)
        return {
            "mode": p.mode,
            "size_before": src.stat().st_size,
            "size_after": out.stat().st_size,
            "nodes_before": sum(before.values()),
            "nodes_after": sum(after.values()),
            "quantized_ops": {op: n for op, n in sorted(after.items())
                              if QUANT_OP.search(op) and n != before.get(op, 0)},
        }


def _qtype(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if name == "int8" else QuantType.QUInt8


def _dynamic(p: OrtQuantizeParams, src: Path, out: Path) -> None:
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(src), str(out), op_types_to_quantize=p.op_types,
                     per_channel=p.per_channel, reduce_range=p.reduce_range,
                     weight_type=_qtype(p.weight_type),
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def _static(p: OrtQuantizeParams, src: Path, out: Path, ctx: StepContext[OrtQuantizeParams]) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    samples = hf.samples_for(ctx, "calibration", limit=p.calibration_samples)
    names = [i.name for i in onnx.load(str(src), load_external_data=False).graph.input]
    reader = _Reader(hf.load_tokenizer(ctx.input("source"), ctx.model.trust_remote_code),
                     samples, names)
    ctx.log(f"calibrating on {len(samples)} samples of {reader.length} tokens")
    with tempfile.TemporaryDirectory(prefix="ort-quantize-") as tmp:
        model = _with_shapes(src, Path(tmp) / "shaped.onnx", ctx)
        exclude = _after_gelu(model) if p.exclude_ffn_output else []
        ctx.log(f"keeping {len(exclude)} MatMuls after GELU in float")
        try:
            quantize_static(str(model), str(out), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=p.op_types or list(STATIC_OPS),
                            per_channel=p.per_channel, reduce_range=p.reduce_range,
                            weight_type=_qtype(p.weight_type),
                            activation_type=_qtype(p.activation_type),
                            calibrate_method=methods[p.calibrate_method],
                            nodes_to_exclude=exclude,
                            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        except Exception as e:
            raise RuntimeError(
                f"static quantization failed: {type(e).__name__}: {e}; with op_types set, leave "
                "out ops on the attention mask path (Add, Softmax, Where); otherwise try "
                "calibrate_method: minmax, or mode: dynamic") from e
    ops = {n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node}
    if "QuantizeLinear" not in ops:
        raise RuntimeError("static quantization quantized no activations (ONNX Runtime could not "
                           "infer the tensor types of this graph); run ort-quantize before "
                           "ort-optimize, or use mode: dynamic")


def _after_gelu(path: Path) -> list[str]:
    """Names of the MatMuls whose input is a GELU output (fused Gelu ops or the erf/tanh form)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}

    def is_gelu(name: str, depth: int) -> bool:
        node = producer.get(name)
        if node is None or depth > 4:
            return False
        if "Gelu" in node.op_type or node.op_type in ("Erf", "Tanh"):
            return True
        return node.op_type in ("Mul", "Add", "Div") and any(
            is_gelu(i, depth + 1) for i in node.input)

    return [n.name for n in graph.node if n.op_type == "MatMul" and n.name and is_gelu(n.input[0], 0)]


def _with_shapes(src: Path, dest: Path, ctx: StepContext[OrtQuantizeParams]) -> Path:
    """The model with symbolic shape inference (needed on fused graphs: without it the quantizer
    cannot type the outputs of contrib ops such as Attention and quantizes no activations)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dest), skip_optimization=True, auto_merge=True)
    except Exception as e:
        ctx.log(f"shape inference before quantization failed ({type(e).__name__}: {e}); "
                "quantizing the model as it is")
        return src
    return dest


class _Reader:
    """Calibration batches: one sample each, padded to the longest sample (fixed shapes)."""

    def __init__(self, tokenizer: Any, samples: list[str], names: list[str]) -> None:
        lengths = [len(tokenizer(s)["input_ids"]) for s in samples]
        self.length = max(lengths)
        self.batches: list[dict[str, Any]] = []
        for s in samples:
            enc = hf.encode(tokenizer, s, max_length=self.length, padding="max_length")
            missing = [n for n in names if n not in enc]
            if missing:
                raise RuntimeError(f"the tokenizer does not produce the model inputs {missing}; "
                                   "calibration needs a tokenizer that matches the model")
            self.batches.append({n: enc[n].astype("int64") for n in names})
        self._it = iter(self.batches)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.batches)


def _fp16(src: Path, out: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(out))
