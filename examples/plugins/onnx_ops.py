"""onnx-ops: a complete check with gates written as a plugin (see docs/plugins.md).

It counts the operators of an ONNX engine; its gates fail a target whose graph is larger than
``max_nodes`` or uses an operator its runtime cannot run (``forbidden_ops``: e.g. the fused
``Attention`` of ONNX Runtime on a runtime without it). Gates judge the metrics and stay out of
the key: changing one re-judges the cached measurement, it does not run the check again.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.step import Step, StepContext, Verdict


class OpsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top: int = Field(5, ge=1, description="How many of the most frequent op types the manifest "
                     "lists.")
    max_nodes: int | None = Field(None, ge=1, description="Gate: at most this many nodes.")
    forbidden_ops: list[str] = Field(default_factory=list, description="Gate: op types the "
                                     "engine must not hold.")


class OnnxOps(Step[OpsParams]):
    name = "onnx-ops"
    version = "1"
    kind = "check"  # produces metrics, judged per target
    description = "Count an ONNX engine's operators; gate on the node count and forbidden ops."
    inputs = ("model",)
    input_formats = {"model": ("onnx",)}
    toolchain = ("onnx",)
    gate_fields = ("max_nodes", "forbidden_ops")  # thresholds: out of the key

    def run(self, ctx: StepContext[OpsParams]) -> dict[str, Any]:
        import onnx

        graph = onnx.load(str(ctx.input("model")), load_external_data=False).graph
        ops = Counter(node.op_type for node in graph.node)
        return {"nodes": len(graph.node), "ops": dict(sorted(ops.items())),
                "top": [op for op, _ in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))
                        [:ctx.params.top]]}

    @classmethod
    def judge(cls, params: OpsParams, metrics: dict[str, Any],
              reference: dict[str, Any] | None) -> Verdict:
        """The manifest section (the metrics) and why this target fails, with its own gates."""
        failures = []
        nodes = metrics["nodes"]
        if params.max_nodes is not None and nodes > params.max_nodes:
            failures.append(f"{nodes} nodes > max_nodes {params.max_nodes} "
                            f"(over by {nodes - params.max_nodes})")
        found = sorted(set(params.forbidden_ops) & set(metrics["ops"]))
        if found:
            counts = ", ".join(f"{op} x{metrics['ops'][op]}" for op in found)
            failures.append(f"forbidden ops in the engine: {counts}")
        return Verdict(dict(metrics), failures)
