"""accuracy: task accuracy of a sequence classifier on a labelled file, engine vs original.

The recipe's ``inputs.labelled`` holds one ``label<TAB>text`` per line (label: a class index or a
name of the model's ``config.id2label``). A shared reference task runs the original PyTorch model
on it once; each engine's task measures its own top-1 accuracy, and the gate ``max_drop`` bounds
how far the engine may fall below the original (``min_accuracy``: an absolute floor). Gates are
out of the key: changing one re-judges the cached figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.host.versions import TOKENIZERS
from orchestrator.runtime import hf
from orchestrator.step import PlanContext, Planned, Resources, StepContext, Verdict
from orchestrator.steps.checks import EngineCheck, device_of

TASK = "sequence-classification"


class AccuracyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(16, ge=1, description="Texts per batch (padded to the longest).")
    max_length: int = Field(128, ge=2, description="Tokenizer truncation length.")
    max_samples: int = Field(2000, ge=1, description="At most this many labelled lines are used.")
    precision_hint: Literal["f32", "bf16", "f16"] = Field(
        "f32", description="OpenVINO INFERENCE_PRECISION_HINT.")
    max_drop: float | None = Field(0.01, ge=0, le=1, description="Gate: the engine's top-1 "
                                   "accuracy may be at most this much below the original's "
                                   "(None: no limit).")
    min_accuracy: float | None = Field(None, ge=0, le=1, description="Gate: the lowest top-1 "
                                       "accuracy allowed.")


class Accuracy(EngineCheck[AccuracyParams]):
    name = "accuracy"
    version = "1"
    description = ("Top-1 accuracy of a sequence classifier on the recipe's labelled file, the "
                   "engine against the original model; gate on the drop.")
    inputs = ("model", "source", "labelled")
    reference = {"precision_hint": "f32"}  # the original model's accuracy: one shared task
    resources = Resources(cpu=2, memory_gb=4)
    gate_fields = ("max_drop", "min_accuracy")

    @classmethod
    def plan(cls, params: AccuracyParams, at: PlanContext) -> Planned[AccuracyParams]:
        if at.task != TASK:
            raise ValueError(f"accuracy measures sequence classifiers (model.task: {TASK}), "
                             f"not {at.task}; remove the check or change model.task")
        if "labelled" not in at.input_formats:
            raise ValueError("accuracy needs a labelled file: set inputs.labelled to a file of "
                             "'label<TAB>text' lines")
        planned = super().plan(params, at)  # the engine's runtime; it tokenizes the texts too
        return cls.planned(params, resources=planned.resources,
                           toolchain=tuple(sorted({*planned.toolchain, *TOKENIZERS})))

    def run(self, ctx: StepContext[AccuracyParams]) -> dict[str, Any]:
        import numpy as np

        from orchestrator.runtime.engines import detect_precision, open_engine

        p, trc = ctx.params, ctx.model.trust_remote_code
        source, model = ctx.input("source"), ctx.input("model")
        labels, texts = read_labelled(ctx.input("labelled"), _label_ids(source), p.max_samples)
        tokenizer = hf.load_tokenizer(source, trc)
        engine = open_engine(model, ctx.threads, p.precision_hint, task=TASK, trust_remote_code=trc,
                             device=device_of(ctx.hardware))
        predicted: list[Any] = []
        for i in range(0, len(texts), p.batch_size):
            enc = hf.encode(tokenizer, texts[i:i + p.batch_size], max_length=p.max_length)
            predicted.append(engine.run({k: np.asarray(v, dtype=np.int64)
                                         for k, v in enc.items()}).argmax(axis=-1))
        correct = int((np.concatenate(predicted) == np.asarray(labels)).sum())
        return {"samples": len(labels), "correct": correct,
                "accuracy": round(correct / len(labels), 6), "precision": detect_precision(model),
                "runtime": engine.describe()}

    @classmethod
    def judge(cls, params: AccuracyParams, metrics: dict[str, Any],
              reference: dict[str, Any] | None) -> Verdict:
        acc = metrics["accuracy"]
        original = reference.get("accuracy") if reference else None
        summary = {**metrics, "reference_accuracy": original}
        failures = []
        if original is not None:
            drop = round(original - acc, 6)
            summary["drop"] = drop
            if params.max_drop is not None and drop > params.max_drop:
                failures.append(f"top-1 accuracy {acc:.4f} is {drop:.4f} below the original's "
                                f"{original:.4f} (max_drop {params.max_drop:g}, over by "
                                f"{drop - params.max_drop:.4f})")
        elif params.max_drop is not None:
            failures.append("no reference accuracy to compare with")
        if params.min_accuracy is not None and acc < params.min_accuracy:
            failures.append(f"top-1 accuracy {acc:.4f} < min_accuracy {params.min_accuracy:g} "
                            f"(short by {params.min_accuracy - acc:.4f})")
        return Verdict(summary, failures)


def _label_ids(source: Path) -> dict[str, int]:
    """config.id2label as name -> id (empty without a config)."""
    try:
        config = json.loads((source / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return {str(name): int(i) for i, name in (config.get("id2label") or {}).items()}


def read_labelled(path: Path, names: dict[str, int], limit: int) -> tuple[list[int], list[str]]:
    """Labels and texts of a labelled file (``label<TAB>text`` lines; blank lines skipped)."""
    labels: list[int] = []
    texts: list[str] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        label, tab, text = line.partition("\t")
        label = label.strip()
        if not tab or not text.strip():
            raise ValueError(f"{path}:{n}: expected 'label<TAB>text', got {line[:60]!r}")
        if label in names:
            labels.append(names[label])
        elif label.isdigit() and (not names or int(label) in names.values()):
            labels.append(int(label))
        else:
            known = ", ".join(sorted(names)) or "class indices"
            raise ValueError(f"{path}:{n}: unknown label {label!r}; the model knows {known}")
        texts.append(text.strip())
        if len(labels) >= limit:
            break
    if not labels:
        raise ValueError(f"{path} holds no labelled lines; give 'label<TAB>text' per line")
    return labels, texts
