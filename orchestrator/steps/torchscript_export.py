"""torchscript-export: a Hugging Face model folder -> a traced TorchScript module (model.pt).

The module takes (input_ids, attention_mask, token_type_ids) int64 tensors and returns the task's
tensor (last_hidden_state for feature-extraction, logits otherwise). Load it with torch.jit.load.
"""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.runtime import hf
from orchestrator.step import Resources, Step, StepContext


class TorchscriptExportParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strict: bool = Field(True, description="torch.jit.trace strict mode (fails on mutable "
                         "container outputs instead of tracing them silently).")


class TorchscriptExport(Step[TorchscriptExportParams]):
    name = "torchscript-export"
    version = "1"
    description = ("Trace a Hugging Face model folder to TorchScript; the module takes "
                   "(input_ids, attention_mask, token_type_ids) and returns one tensor.")
    inputs = ("model",)
    outputs = {"model": "model.pt"}
    input_formats = {"model": ("hf-model",)}
    output_formats = {"model": "torchscript"}
    resources = Resources(cpu=2, memory_gb=4)
    toolchain = ("torch", "transformers")
    preload = ("torch", "transformers", "transformers.modeling_utils")

    def run(self, ctx: StepContext[TorchscriptExportParams]) -> dict[str, Any]:
        import torch

        p: TorchscriptExportParams = ctx.params
        torch.set_num_threads(max(1, ctx.threads))
        folder = ctx.input("model")
        model = hf.load_model(folder, ctx.model.task, ctx.model.trust_remote_code)
        _, enc = hf.example_inputs(folder, ctx.model.trust_remote_code)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        types = enc.get("token_type_ids", torch.zeros_like(ids))
        wrapper = _wrapper(model, hf.output_names(ctx.model.task)[0])
        trace: Any = torch.jit.trace  # untyped in torch's stubs
        with torch.no_grad():
            traced = trace(wrapper, (ids, mask, types), strict=p.strict)
        torch.jit.save(traced, str(ctx.output("model")))
        return {
            "parameters": sum(int(t.numel()) for t in model.parameters()),
            "output": hf.output_names(ctx.model.task)[0],
        }


def _wrapper(model: Any, output: str) -> Any:
    """(input_ids, attention_mask, token_type_ids) -> one tensor; token_type_ids is ignored by
    models whose forward does not take it."""
    import torch

    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if takes_types:
                kwargs["token_type_ids"] = token_type_ids
            return self.model(**kwargs, return_dict=True)[output]

    return Wrapper().eval()
