"""litert-convert: the Hugging Face model -> a LiteRT (.tflite) flatbuffer, via litert-torch.

The model gets one static signature, [batch, sequence] (default: batch 1 and the recipe's
longest sequence): the documented choice for edge devices, which run one request at a time at a
fixed length; the check runtime pads shorter inputs and runs larger batches row by row. Inputs
are int32 (LiteRT refuses int64). The job runs in the LiteRT environment
(orchestrator.edge.litert_env), whose package versions are in the key.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator import formats
from orchestrator.step import PlanContext, Planned, Resources, Step, StepContext


class LitertConvertParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch: int = Field(1, ge=1, description="The static batch size of the signature.")
    sequence: int | None = Field(None, ge=1, description="The static sequence length (default: "
                                 "the longest of inputs.shapes.sequence).")


class LitertConvert(Step[LitertConvertParams]):
    name = "litert-convert"
    version = "1"
    description = ("Convert the Hugging Face model to LiteRT (.tflite, one static int32 "
                   "signature) with litert-torch, in the LiteRT environment.")
    inputs = ("model",)
    outputs = {"model": "model.tflite"}
    input_formats = {"model": (formats.HF_MODEL,)}
    output_formats = {"model": formats.TFLITE}
    resources = Resources(cpu=2, memory_gb=6)
    toolchain = ("torch", "transformers")
    machine_keys = ("litert_env",)

    @staticmethod
    def environment_problem(step: str) -> str | None:
        from orchestrator.edge.litert_env import problem

        return problem(step)

    @classmethod
    def plan(cls, params: LitertConvertParams, at: PlanContext) -> Planned[LitertConvertParams]:
        seq = params.sequence or max(at.shapes.get("sequence") or [128])
        return cls.planned(params.model_copy(update={"sequence": seq}))

    def run(self, ctx: StepContext[LitertConvertParams]) -> dict[str, Any]:
        from orchestrator.edge.litert_env import run_job

        p = ctx.params
        return run_job({"job": "convert", "source": str(ctx.input("model")), "batch": p.batch,
                        "sequence": p.sequence, "out": str(ctx.output("model"))},
                       ctx.log, ctx.threads)
