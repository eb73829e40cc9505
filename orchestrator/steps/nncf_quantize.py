"""nncf-quantize: an OpenVINO IR folder -> a quantized IR folder, with NNCF.

Modes: ``int8`` (post-training static quantization of weights and activations, calibrated on the
recipe's samples tokenized with the source's tokenizer), ``weights-int8`` / ``weights-int4`` /
``weights-int4-asym`` (weight-only compression, data-free). ``int8`` always uses
``model_type=TRANSFORMER``: without it NNCF quantizes the attention softmax/layer-norm paths and
a BERT model breaks (cosine 0.41 vs PyTorch on MiniLM).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.runtime import hf
from orchestrator.runtime.engines import model_file
from orchestrator.step import PlanContext, Planned, Resources, Step, StepContext
from orchestrator.steps.openvino_convert import ir_summary, normalize_names, telemetry_opt_out

Mode = Literal["int8", "weights-int8", "weights-int4", "weights-int4-asym"]


class NncfQuantizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Mode = Field("int8", description="'int8': static quantization of weights and "
                       "activations (calibrated); 'weights-int8' / 'weights-int4' (symmetric) / "
                       "'weights-int4-asym': weight-only compression, no calibration.")
    preset: Literal["performance", "mixed"] = Field(
        "performance", description="int8 only: 'performance' (symmetric activations) or 'mixed' "
        "(asymmetric activations: more accurate for activations that are not centred on zero).")
    samples: int = Field(300, ge=1, description="int8 only: most calibration samples used.")
    fast_bias_correction: bool = Field(True, description="int8 only: fast (True) or full bias "
                                       "correction (slower, sometimes more accurate).")
    group_size: int = Field(128, ge=-1, description="weights-int4*: weights per quantization "
                            "group (-1: per output channel); must divide each layer's channels.")
    ratio: float = Field(1.0, gt=0.0, le=1.0, description="weights-int4*: share of layers in "
                         "int4; the rest are int8.")
    max_length: int = Field(128, ge=8, description="int8 only: calibration samples are "
                            "truncated to this many tokens.")


CALIBRATION = ("preset", "samples", "fast_bias_correction", "max_length")
INT4_ONLY = ("group_size", "ratio")


class NncfQuantize(Step[NncfQuantizeParams]):
    name = "nncf-quantize"
    version = "1"
    description = ("Quantize an OpenVINO IR with NNCF: int8 static quantization (calibrated on the "
                   "samples) or weight-only int8/int4 compression.")
    inputs = ("model", "source", "samples")
    outputs = {"model": "ir/"}
    input_formats = {"model": ("openvino-ir",)}
    output_formats = {"model": "openvino-ir"}
    resources = Resources(cpu=2, memory_gb=6)
    toolchain = ("openvino", "nncf")

    @classmethod
    def plan(cls, params: NncfQuantizeParams, at: PlanContext) -> Planned[NncfQuantizeParams]:
        """Only int8 calibrates (reads the samples, uses the calibration params); group size and
        ratio only apply to int4."""
        unused: tuple[str, ...] = () if params.mode == "int8" else CALIBRATION
        if not params.mode.startswith("weights-int4"):
            unused += INT4_ONLY
        inputs = cls.inputs if params.mode == "int8" else ("model",)
        return cls.planned(params, inputs=inputs, unused=unused)

    def run(self, ctx: StepContext[NncfQuantizeParams]) -> dict[str, Any]:
        telemetry_opt_out()
        import logging

        import nncf
        import openvino as ov

        nncf.set_log_level(logging.WARNING)
        p: NncfQuantizeParams = ctx.params
        xml_in = model_file(ctx.input("model"), ".xml", "; an OpenVINO IR folder (model.xml + "
                            "model.bin) is needed: put openvino-convert before nncf-quantize")
        model = ov.Core().read_model(str(xml_in))
        metrics: dict[str, Any] = {"mode": p.mode}
        if p.mode == "int8":
            data = calibration_data(ctx, model)
            ctx.log(f"nncf-quantize: calibrating on {len(data)} samples")
            preset = {"performance": nncf.QuantizationPreset.PERFORMANCE,
                      "mixed": nncf.QuantizationPreset.MIXED}[p.preset]
            model = nncf.quantize(model, nncf.Dataset(data), preset=preset,
                                  model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(data),
                                  fast_bias_correction=p.fast_bias_correction)
            metrics.update(preset=p.preset, calibration_samples=len(data))
        else:
            model = _compress_weights(model, p)
        normalize_names(model)
        xml = ctx.output("model") / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        summary = ir_summary(ov.Core().read_model(str(xml)), xml.parent)
        size_before = sum(f.stat().st_size for f in (xml_in, xml_in.with_suffix(".bin"))
                          if f.exists())
        metrics.update(size_before_bytes=size_before, size_after_bytes=summary["size_bytes"],
                       **{k: v for k, v in summary.items() if k != "size_bytes"})
        return metrics


def calibration_data(ctx: StepContext[NncfQuantizeParams], model: Any) -> list[dict[str, Any]]:
    """One feed dict per sample (batch 1, truncated to max_length), keyed by the IR's inputs."""
    p: NncfQuantizeParams = ctx.params
    tokenizer = hf.load_tokenizer(ctx.input("source"), ctx.model.trust_remote_code)
    samples = hf.samples_for(ctx, "calibration", limit=p.samples)
    if not samples:
        raise ValueError("the samples file has no non-empty lines; int8 calibration needs text "
                         "(add sentences to it, or use mode: weights-int8)")
    ports = {port.get_any_name(): port.get_element_type().to_dtype() for port in model.inputs}
    data = []
    for text in samples:
        enc = hf.encode(tokenizer, text, max_length=p.max_length)
        missing = sorted(set(ports) - set(enc))
        if missing:
            raise ValueError(f"the tokenizer does not produce the model inputs {missing}; the "
                             "IR must come from the same model as the recipe's source")
        data.append({name: enc[name].astype(dtype) for name, dtype in ports.items()})
    return data


def _compress_weights(model: Any, p: NncfQuantizeParams) -> Any:
    import nncf

    if p.mode == "weights-int8":
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    mode = (nncf.CompressWeightsMode.INT4_SYM if p.mode == "weights-int4"
            else nncf.CompressWeightsMode.INT4_ASYM)
    try:
        return nncf.compress_weights(model, mode=mode, group_size=p.group_size, ratio=p.ratio)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(f"{p.mode} compression failed on this model: {first} Use mode: "
                           "weights-int8, or a group_size that divides every layer's channel "
                           "count (e.g. 32 or 64; -1 for per-channel).") from e
