"""size: the engine's size on disk, with a budget gate (``max_mb``).

A file's size, or the sum of a folder's files (an OpenVINO IR: .xml + .bin). MB are 2^20 bytes,
as the build's summary table shows them. The budget is a gate: out of the key, so changing it
re-judges the cached measurement.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator import formats
from orchestrator.step import Resources, Step, StepContext, Verdict

MB = 2**20


class SizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_mb: float | None = Field(None, gt=0, description="Gate: the engine may take at most "
                                 "this many MB (2^20 bytes) on disk.")


class Size(Step[SizeParams]):
    name = "size"
    version = "1"
    kind = "check"
    description = "The engine's size on disk (all files of a folder engine); gate max_mb."
    inputs = ("model",)
    input_formats = {"model": (formats.ANY,)}
    resources = Resources(cpu=1, memory_gb=0.1)
    gate_fields = ("max_mb",)

    def run(self, ctx: StepContext[SizeParams]) -> dict[str, Any]:
        path = ctx.input("model")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        total = sum(f.stat().st_size for f in files)
        return {"bytes": total, "mb": round(total / MB, 3), "files": len(files)}

    @classmethod
    def judge(cls, params: SizeParams, metrics: dict[str, Any],
              reference: dict[str, Any] | None) -> Verdict:
        limit = params.max_mb
        mb = metrics["bytes"] / MB
        if limit is not None and mb > limit:
            return Verdict(dict(metrics), [f"size {mb:.2f} MB > max_mb {limit:g} "
                                           f"(over by {mb - limit:.2f} MB)"])
        return Verdict(dict(metrics))
