"""tensorrt-build: ONNX -> a serialized TensorRT engine for the GPU it is built on.

Precision comes from the ONNX graph (TensorRT 11 has no fp16/int8 builder flags): put
``ort-quantize {mode: fp16}`` before it for an fp16 engine (inputs and outputs stay int64/fp32).
Build from the exported graph, not from ``ort-optimize``'s (its fused ops are ONNX Runtime's own).
One optimization profile spans the recipe's shapes (orchestrator.runtime.trt.profile).

An engine only runs on the GPU type, TensorRT and CUDA it was built with, so the key holds the
GPU's name and compute capability and the CUDA version (machine keys) and TensorRT's version
(toolchain). TensorRT engines are not byte-reproducible: two builds of one key may differ in
bytes (the manifest says so); the cache keeps the first. The timing cache is its own output,
cached under the same key. ``tensorrt`` is imported only in ``run``; the step is listed whether
or not it is installed, and a target using it is skipped where it is not.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator import formats
from orchestrator.step import PlanContext, Planned, Resources, Step, StepContext

Size = Annotated[int, Field(ge=1)]


class TensorrtBuildParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch: list[Size] | None = Field(None, min_length=1, description="Batch sizes the engine takes (default: "
                                    "inputs.shapes.batch); the profile spans min..max.")
    sequence: list[Size] | None = Field(None, min_length=1, description="Sequence lengths (default: "
                                       "inputs.shapes.sequence).")
    workspace_mb: int = Field(4096, ge=1, description="Builder workspace memory pool, MiB.")
    optimization_level: int = Field(3, ge=0, le=5, description="builder_optimization_level "
                                    "(0-5; higher searches longer for faster kernels).")


class TensorrtBuild(Step[TensorrtBuildParams]):
    name = "tensorrt-build"
    version = "1"
    description = ("Build a TensorRT engine from ONNX (precision from the graph; one profile over "
                   "the recipe's shapes). Needs a CUDA GPU and the gpu extra.")
    inputs = ("model",)
    outputs = {"model": "engine/", "timing_cache": "timing.cache"}
    input_formats = {"model": (formats.ONNX,)}
    output_formats = {"model": formats.TENSORRT_ENGINE,
                      "timing_cache": formats.TENSORRT_TIMING_CACHE}
    resources = Resources(cpu=2, cuda=1, memory_gb=8)
    toolchain = ("tensorrt", "onnx")
    optional_toolchain = ("tensorrt",)
    machine_keys = ("gpu_name", "gpu_compute_capability", "cuda_version")

    @classmethod
    def plan(cls, params: TensorrtBuildParams, at: PlanContext) -> Planned[TensorrtBuildParams]:
        done = params.model_copy(update={
            "batch": sorted(set(params.batch or at.shapes.get("batch") or [1])),
            "sequence": sorted(set(params.sequence or at.shapes.get("sequence") or [128]))})
        return cls.planned(done)

    def run(self, ctx: StepContext[TensorrtBuildParams]) -> dict[str, Any]:
        from orchestrator.runtime.engines import detect_precision
        from orchestrator.runtime.trt import build_engine, profile

        p = ctx.params
        prof = profile(p.batch or [1], p.sequence or [128])
        engine, timing = build_engine(ctx.input("model"), prof, p.workspace_mb,
                                      p.optimization_level, ctx.log)
        folder = ctx.output("model")
        (folder / "model.plan").write_bytes(engine)
        about = {"precision": detect_precision(ctx.input("model")), "profile": prof,
                 "byte_reproducible": False}
        (folder / "engine.json").write_text(json.dumps(about, sort_keys=True, indent=2) + "\n")
        ctx.output("timing_cache").write_bytes(timing)
        return {**about, "engine_bytes": len(engine), "timing_cache_bytes": len(timing)}
