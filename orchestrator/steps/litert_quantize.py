"""litert-quantize: quantize a LiteRT model with ai-edge-quantizer, in the LiteRT environment.

- ``dynamic-int8``: int8 weights, activations quantized at run time (dynamic_wi8_afp32);
- ``int8``: full-integer int8 weights and activations, calibrated on the recipe's samples
  (static_wi8_ai8): the form an Edge TPU compiler takes (its compiler is not installable here:
  a plugin step that runs ``edgetpu_compiler`` on this step's output would add it);
- ``fp16``: float16 weights (FLOAT_CASTING).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator import formats
from orchestrator.step import PlanContext, Planned, Resources, Step, StepContext


class LitertQuantizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["dynamic-int8", "int8", "fp16"] = Field(
        "dynamic-int8", description="dynamic-int8, int8 (full integer, calibrated on the "
                                    "samples) or fp16 weights.")
    max_samples: int = Field(128, ge=1, description="int8: calibration sentences at most.")


class LitertQuantize(Step[LitertQuantizeParams]):
    name = "litert-quantize"
    version = "1"
    description = ("Quantize a LiteRT model with ai-edge-quantizer: dynamic int8, full-integer "
                   "int8 calibrated on the samples, or fp16 weights.")
    inputs = ("model", "source", "samples")
    outputs = {"model": "model.tflite"}
    input_formats = {"model": (formats.TFLITE,)}
    output_formats = {"model": formats.TFLITE}
    resources = Resources(cpu=2, memory_gb=4)
    machine_keys = ("litert_env",)

    @staticmethod
    def environment_problem(step: str) -> str | None:
        from orchestrator.edge.litert_env import problem

        return problem(step)

    @classmethod
    def plan(cls, params: LitertQuantizeParams, at: PlanContext) -> Planned[LitertQuantizeParams]:
        if params.mode == "int8":  # calibration reads the samples with the source's tokenizer
            return cls.planned(params, toolchain=("tokenizers", "transformers"))
        return cls.planned(params, inputs=("model",), unused=("max_samples",))

    def run(self, ctx: StepContext[LitertQuantizeParams]) -> dict[str, Any]:
        from orchestrator.edge.litert_env import run_job

        p = ctx.params
        spec: dict[str, object] = {"job": "quantize", "mode": p.mode, "model": str(ctx.input("model")),
                                   "out": str(ctx.output("model")), "threads": ctx.threads}
        if p.mode == "int8":
            if "samples" not in ctx.inputs:
                raise ValueError("litert-quantize {mode: int8} calibrates on the recipe's "
                                 "inputs.samples; the recipe has none: add it, or use "
                                 "mode: dynamic-int8")
            spec.update(source=str(ctx.input("source")), samples=str(ctx.input("samples")),
                        max_samples=p.max_samples)
        return run_job(spec, ctx.log, ctx.threads)
