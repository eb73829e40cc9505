"""onnx-stamp: a complete transform step written as a plugin (see docs/plugins.md).

It writes key/value metadata (owner, license, a model card URL, ...) into an ONNX model: what a
team adds before it ships an engine, so that whoever finds the file knows where it came from.
The recipe lists this file under ``plugins:``; the registry reads its ``name`` from the source
and imports it only when a recipe uses ``onnx-stamp``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.step import PlanContext, Planned, Resources, Step, StepContext


class StampParams(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in the recipe is an error, not ignored

    entries: dict[str, str] = Field(default_factory=dict, description="Metadata written into "
                                    "the model (key -> value); existing keys are overwritten.")
    doc_string: str | None = Field(None, description="The model's doc string (None: keep it).")
    strict: bool = Field(False, description="Fail when the model has metadata keys not in "
                         "'entries' (a model stamped before).")


class OnnxStamp(Step[StampParams]):  # Step[StampParams]: ctx.params is a StampParams
    name = "onnx-stamp"
    version = "1"  # bump when the same inputs and params would now give other bytes
    description = "Write key/value metadata (owner, license, model card) into an ONNX model."
    inputs = ("model",)
    outputs = {"model": "model.onnx"}
    input_formats = {"model": ("onnx",)}  # what the step before must give
    output_formats = {"model": "onnx"}  # validated right after run(), before caching
    resources = Resources(cpu=1, memory_gb=1)
    toolchain = ("onnx",)  # its version enters the key

    @classmethod
    def plan(cls, params: StampParams, at: PlanContext) -> Planned[StampParams]:
        """'strict' only matters when there is something to compare with: without entries it
        is left at its default, so setting it alone changes neither the key nor the work."""
        return cls.planned(params, unused=() if params.entries else ("strict",))

    def run(self, ctx: StepContext[StampParams]) -> dict[str, Any]:
        import onnx  # heavy imports inside run(): planning stays fast

        p = ctx.params
        model = onnx.load(str(ctx.input("model")))
        before = {m.key: m.value for m in model.metadata_props}
        stray = sorted(set(before) - set(p.entries))
        if p.strict and stray:
            raise ValueError(f"the model already holds metadata {stray}; add them to 'entries' "
                             "or set strict: false")
        merged = {**before, **p.entries}
        del model.metadata_props[:]
        for key in sorted(merged):
            model.metadata_props.add(key=key, value=merged[key])
        if p.doc_string is not None:
            model.doc_string = p.doc_string
        onnx.save(model, str(ctx.output("model")))
        ctx.log(f"stamped {len(p.entries)} entries: {', '.join(sorted(p.entries))}")
        if stray:
            ctx.warn(f"kept metadata the recipe does not set: {stray}")
        return {"entries": sorted(p.entries), "kept": stray}
