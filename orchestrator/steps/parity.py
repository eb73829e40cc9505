"""parity: compare an engine's outputs with the PyTorch reference model on the sample texts.

feature-extraction: cosine of the sentence embeddings (mean pooling over the attention mask +
L2 norm) per sample, and the max abs diff of last_hidden_state over real (unmasked) tokens.
Classification tasks: cosine of the logits per sample (per real token for token-level tasks),
top-1 agreement and the max abs diff of the logits.

Samples are truncated where the model truncates them: by default at the model's maximum sequence
length (its sentence_bert_config.json max_seq_length, else the tokenizer's model_max_length, else
its positions: runtime/hf.max_sequence_length), the length the bundle records and applies. An
engine that takes fewer tokens (a LiteRT model's static sequence, a TensorRT profile's maximum) is
fed what it takes: a longer sample is cut to that many tokens, its last kept token replaced by the
sample's closing special token (what the tokenizer would give at that length), and compared with
the reference of the whole sample. Those samples are reported apart (``truncated``: how many, at
how many ``tokens``, their cosines) with a warning, and not gated: the gates judge the engine on what
it sees; the warning says what it cannot see.

The thresholds are gate fields (out of the key): None means the default for the precision the
engine holds (see DEFAULTS), so one recipe line `parity: {}` fits fp32, fp16 and int8 engines.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.runtime import hf
from orchestrator.step import PlanContext, Planned, Resources, StepContext, Verdict
from orchestrator.steps.checks import EngineCheck, device_of

# Defaults per engine precision, from all-MiniLM-L6-v2 (64 samples, 2 threads) vs PyTorch fp32:
# legacy ONNX export 3.1e-6 max abs diff; OpenVINO IR with f32 weights 3.9e-6, with fp16-stored
# weights (save_model's default) 4.6e-3 at cosine 0.999999; OpenVINO with the bf16 hint (the
# silent default on bf16 CPUs) 2.6e-2 at cosine 0.99998, which the fp32 max_abs_diff must catch.
# int8 per-channel 0.992 mean / 0.988 min cosine passes; per-tensor 0.955 / 0.934 must fail.
DEFAULTS: dict[str, dict[str, float | None]] = {
    "fp32": {"min_cosine": 0.9999, "mean_cosine": 0.9999, "max_abs_diff": 1e-2, "min_top1": 0.98},
    "fp16": {"min_cosine": 0.999, "mean_cosine": 0.999, "max_abs_diff": None, "min_top1": 0.98},
    "int8": {"min_cosine": 0.97, "mean_cosine": 0.99, "max_abs_diff": None, "min_top1": 0.95},
}
GATES = ("min_cosine", "mean_cosine", "max_abs_diff", "min_top1")


class ParityParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(8, ge=1, description="Samples per batch (padded to the longest).")
    max_length: int | None = Field(
        None, ge=2, description="Tokenizer truncation length (None: the model's maximum sequence "
        "length, as its files say: sentence_bert_config.json max_seq_length, else the tokenizer's "
        "model_max_length, else config.json max_position_embeddings; 128 when none says).")
    max_samples: int = Field(128, ge=1, description="At most this many sample lines are compared.")
    precision_hint: Literal["f32", "bf16", "f16"] = Field(
        "f32", description="OpenVINO INFERENCE_PRECISION_HINT (set explicitly: bf16 CPUs default "
        "to bf16).")
    min_cosine: float | None = Field(None, ge=-1, le=1, description="Lowest per-sample cosine allowed "
                                     "(None: the default for the engine's precision).")
    mean_cosine: float | None = Field(None, ge=-1, le=1,
                                      description="Lowest mean cosine allowed (None: default).")
    max_abs_diff: float | None = Field(None, ge=0, description="Largest abs diff of the output over real "
                                       "tokens (None: default; fp32 only).")
    min_top1: float | None = Field(None, ge=0, le=1, description="Lowest top-1 agreement, classification "
                                   "tasks (None: default).")


class Parity(EngineCheck[ParityParams]):
    name = "parity"
    version = "2"
    description = "Compare the engine's outputs with the PyTorch reference on the sample texts."
    inputs = ("model", "source", "samples", "reference")
    outputs = {"reference": "reference/"}
    output_formats = {"reference": "parity-reference"}
    # One shared task runs the PyTorch reference on the samples; params that only concern the
    # engine are normalized so that every target shares it.
    reference = {"precision_hint": "f32"}
    resources = Resources(cpu=2, memory_gb=4)
    gate_fields = GATES

    @classmethod
    def plan(cls, params: ParityParams, at: PlanContext) -> Planned[ParityParams]:
        """The PyTorch reference task takes two threads; an engine's comparison (a second or
        two, most of it the worker's start-up) takes one, so two run side by side."""
        planned = super().plan(params, at)
        if at.reference:
            return planned
        return dataclasses.replace(planned, resources=planned.resources.model_copy(
            update={"cpu": 1}))

    def run(self, ctx: StepContext[ParityParams]) -> dict[str, Any]:
        if ctx.reference:
            return self._reference(ctx)
        import numpy as np

        from orchestrator.runtime.engines import detect_precision, open_engine

        p: ParityParams = ctx.params
        task, trc = ctx.model.task, ctx.model.trust_remote_code
        model = ctx.input("model")
        engine = open_engine(model, ctx.threads, p.precision_hint, task=task,
                             trust_remote_code=trc, device=device_of(ctx.hardware))
        batches = _load_reference(ctx.input("reference")) if "reference" in ctx.inputs \
            else _reference_batches(ctx)[0]
        takes = engine_max_tokens(model, engine.describe())
        cmp = _Comparison(task)
        for batch, ref in batches:
            mask = batch["attention_mask"]
            feed, cut = batch, np.zeros(len(mask), dtype=bool)
            if takes is not None and mask.shape[1] > takes:
                feed, cut = truncate(batch, takes), mask.sum(axis=1) > takes
            out = engine.run(feed)
            cmp.add(batch, feed, ref, out, cut)
        metrics: dict[str, Any] = {
            "samples": sum(len(b["attention_mask"]) for b, _ in batches),
            "task": task,
            "precision": detect_precision(model),
            "max_length": _max_length(p, ctx.inputs.get("source")),
            "max_tokens": max(int(b["attention_mask"].sum(axis=1).max()) for b, _ in batches),
            **cmp.metrics(),
            "runtime": engine.describe(),
        }
        if "truncated" in metrics:
            t = metrics["truncated"]
            t["tokens"] = takes
            ctx.warn(f"parity: {t['samples']} of {metrics['samples']} samples are longer than the "
                     f"{takes} tokens this engine takes (the model takes {metrics['max_length']}): "
                     f"compared cut to {takes} tokens (mean cosine {t['mean_cosine']}, min "
                     f"{t['min_cosine']}) and "
                     + ("gated: no sample fits whole" if t["gated"] else "left out of the gates")
                     + f"; a deployment of this engine sees only the first {takes} tokens of a "
                     "text")
        return metrics

    def _reference(self, ctx: StepContext[ParityParams]) -> dict[str, Any]:
        """The reference task: run PyTorch once on the tokenized samples and store inputs and
        outputs, so that every target's parity needs neither torch nor the tokenizer."""
        import numpy as np

        batches, runtime = _reference_batches(ctx)
        out = ctx.output("reference")
        for i, (batch, ref) in enumerate(batches):
            for name, arr in sorted(batch.items()):
                np.save(out / f"{i:04d}.in.{name}.npy", arr)
            np.save(out / f"{i:04d}.out.npy", ref)
        return {"samples": sum(len(b["attention_mask"]) for b, _ in batches),
                "batches": len(batches), "task": ctx.model.task, "runtime": runtime,
                "max_length": _max_length(ctx.params, ctx.input("source")),
                "max_tokens": max(int(b["attention_mask"].sum(axis=1).max()) for b, _ in batches)}

    @classmethod
    def thresholds(cls, params: ParityParams, metrics: dict[str, Any]) -> dict[str, float | None]:
        """The effective thresholds: explicit params, else the defaults for the precision."""
        defaults = DEFAULTS.get(str(metrics.get("precision")), DEFAULTS["fp32"])
        out = {g: getattr(params, g) if getattr(params, g) is not None else defaults[g]
               for g in GATES}
        if "top1_agreement" not in metrics:
            out.pop("min_top1")
        return out

    @classmethod
    def judge(cls, params: ParityParams, metrics: dict[str, Any],
              reference: dict[str, Any] | None) -> Verdict:
        summary = {**metrics, "thresholds": cls.thresholds(params, metrics)}
        if reference is not None:
            summary["reference_runtime"] = reference.get("runtime")
        return Verdict(summary, cls.failures(params, metrics))

    @classmethod
    def failures(cls, params: ParityParams, metrics: dict[str, Any]) -> list[str]:
        """Why the metrics fail this target's thresholds (empty: they pass)."""
        problems: list[str] = []
        t = cls.thresholds(params, metrics)
        prec = metrics.get("precision")
        checks = [("min_cosine", "min cosine", "min_cosine", True),
                  ("mean_cosine", "mean cosine", "mean_cosine", True),
                  ("top1_agreement", "top-1 agreement", "min_top1", True),
                  ("max_abs_diff", "max abs diff", "max_abs_diff", False)]
        for metric, label, gate, lower_bound in checks:
            limit, value = t.get(gate), metrics.get(metric)
            if limit is None or value is None:
                continue
            origin = "" if getattr(params, gate) is not None else f", {prec} default"
            if lower_bound and value < limit:
                v, lim, by = _fmt(value, limit, limit - value)
                problems.append(f"{label} {v} < {lim} (short by {by}{origin})")
            elif not lower_bound and value > limit:
                v, lim, by = _fmt(value, limit, value - limit)
                problems.append(f"{label} {v} > {lim} (over by {by}{origin})")
        return problems


def _reference_batches(
        ctx: StepContext[ParityParams]) -> tuple[list[tuple[dict[str, Any], Any]], dict[str, Any]]:
    """Tokenized sample batches with the PyTorch reference outputs, and the reference runtime."""
    import numpy as np

    from orchestrator.runtime.engines import open_engine

    p: ParityParams = ctx.params
    task, trc = ctx.model.task, ctx.model.trust_remote_code
    texts = hf.samples_for(ctx, "parity", limit=p.max_samples)
    if not texts:
        raise ValueError("parity has no sample texts to compare (the samples file is empty)")
    source = ctx.input("source")
    tokenizer = hf.load_tokenizer(source, trc)
    reference = open_engine(source, ctx.threads, task=task, trust_remote_code=trc,
                            device=device_of(ctx.hardware))
    out = []
    limit = _max_length(p, source)
    for i in range(0, len(texts), p.batch_size):
        enc = hf.encode(tokenizer, texts[i:i + p.batch_size], max_length=limit)
        batch = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}
        out.append((batch, reference.run(batch)))
    return out, reference.describe()


FALLBACK_MAX_LENGTH = 128  # when no file of the model says how many tokens it takes


def _max_length(p: ParityParams, source: Any) -> int:
    """The truncation length: the param, else the model's maximum sequence length."""
    if p.max_length is not None:
        return p.max_length
    found = hf.max_sequence_length(Path(source)) if source is not None else None
    return found[0] if found else FALLBACK_MAX_LENGTH


def engine_max_tokens(model: Any, settings: dict[str, Any]) -> int | None:
    """The most tokens the engine takes when it is shaped for fewer than any: a LiteRT model's
    static sequence (its runtime's ``static_shape``), a TensorRT engine's profile maximum
    (``engine.json`` beside the plan). None: any length (ONNX Runtime, OpenVINO, PyTorch)."""
    static = settings.get("static_shape")
    if isinstance(static, list) and len(static) == 2:
        return int(static[1])
    about = Path(model) / "engine.json"
    if about.is_file():
        import json

        try:
            return int(json.loads(about.read_text())["profile"]["max"][1])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None
    return None


def truncate(batch: dict[str, Any], tokens: int) -> dict[str, Any]:
    """The batch cut to ``tokens`` positions, as the tokenizer would have cut each longer
    sample: its first tokens, then its closing special token (the last real one, [SEP] or
    </s>) in the last position. Right-padded batches (what hf.encode makes)."""
    import numpy as np

    out = {k: np.ascontiguousarray(v[:, :tokens]) for k, v in batch.items()}
    lengths = batch["attention_mask"].sum(axis=1)
    for row in np.flatnonzero(lengths > tokens):
        out["input_ids"][row, tokens - 1] = batch["input_ids"][row, lengths[row] - 1]
    return out


class _Comparison:
    """Cosines (and top-1 agreement, max abs diff) of the engine's outputs against the
    reference's, apart for the samples the engine saw whole and those it saw cut."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.cos: dict[bool, list[Any]] = {False: [], True: []}
        self.agree: list[Any] = []
        self.max_diff = 0.0
        self.cut_samples = 0

    def add(self, batch: dict[str, Any], feed: dict[str, Any], ref: Any, out: Any,
            cut: Any) -> None:
        import numpy as np

        mask, fmask = batch["attention_mask"], feed["attention_mask"]
        seq = fmask.shape[1]
        r = ref[:, :seq] if ref.ndim == 3 else ref
        if r.shape != out.shape:
            raise ValueError(f"the engine's output has shape {out.shape}, the reference's "
                             f"{r.shape}")
        whole = ~cut
        self.cut_samples += int(cut.sum())
        if whole.any():  # a sample seen whole: all its tokens lie in the first seq positions
            real = fmask[whole].astype(bool)
            diff = np.abs(r[whole] - out[whole])
            self.max_diff = max(self.max_diff, float((diff[real] if r.ndim == 3 else diff).max()))
        if self.task == "feature-extraction":
            cos = (hf.mean_pool(ref, mask) * hf.mean_pool(out, fmask)).sum(axis=1)
            for part in (False, True):
                self.cos[part].append(cos[cut == part])
            return
        for part in (False, True):
            rows = cut == part
            if not rows.any():
                continue
            if r.ndim == 3:  # per token: the real tokens the engine got as the reference did
                same = fmask[rows].astype(bool) & (feed["input_ids"][rows] ==
                                                   batch["input_ids"][rows][:, :seq])
                a, b = r[rows][same], out[rows][same]
            else:
                a, b = r[rows], out[rows]
            self.cos[part].append(_cosine(a, b))
            if not part:
                self.agree.append(a.argmax(axis=-1) == b.argmax(axis=-1))

    def metrics(self) -> dict[str, Any]:
        import numpy as np

        whole = np.concatenate(self.cos[False]).astype(np.float64) if self.cos[False] else None
        cut = np.concatenate(self.cos[True]).astype(np.float64) if self.cos[True] else None
        gated = whole if whole is not None and whole.size else cut
        if gated is None or not gated.size:
            raise ValueError("parity compared no samples")
        out: dict[str, Any] = {"max_abs_diff": _sig(self.max_diff),
                               "mean_cosine": _sig(float(gated.mean())),
                               "min_cosine": _sig(float(gated.min()))}
        if self.agree:
            out["top1_agreement"] = _sig(float(np.concatenate(self.agree).mean()))
        if cut is not None and cut.size:
            out["truncated"] = {"samples": self.cut_samples,
                                "gated": gated is cut,
                                "mean_cosine": _sig(float(cut.mean())),
                                "min_cosine": _sig(float(cut.min()))}
        return out


def _load_reference(folder: Any) -> list[tuple[dict[str, Any], Any]]:
    import numpy as np

    batches = []
    for out_file in sorted(folder.glob("*.out.npy")):
        prefix = out_file.name.split(".")[0]
        batch = {f.name.split(".")[2]: np.load(f) for f in sorted(folder.glob(f"{prefix}.in.*.npy"))}
        batches.append((batch, np.load(out_file)))
    if not batches:
        raise ValueError(f"the parity reference folder {folder} holds no batches")
    return batches


def _cosine(a: Any, b: Any) -> Any:
    import numpy as np

    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1)
    return (a64 * b64).sum(axis=-1) / np.clip(norms, 1e-30, None)


def _sig(x: float, digits: int = 6) -> float:
    """Round to significant digits so manifests stay stable across tiny float noise."""
    return float(f"{x:.{digits}g}")


def _fmt(value: float, limit: float, by: float) -> tuple[str, str, str]:
    """Value and shortfall with 3 significant digits of the shortfall (at least 4 decimals)."""
    import math

    if abs(limit) < 1e-2:  # small abs-diff limits read better in scientific notation
        return f"{value:.3g}", repr(float(limit)), f"{by:.3g}"
    d = min(10, max(4, 2 - math.floor(math.log10(by)))) if by > 0 else 4
    return f"{value:.{d}f}", repr(float(limit)), f"{by:.{d}f}"
