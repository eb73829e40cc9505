"""parity: compare an engine's outputs with the PyTorch reference model on the sample texts.

feature-extraction: cosine of the sentence embeddings (mean pooling over the attention mask +
L2 norm) per sample, and the max abs diff of last_hidden_state over real (unmasked) tokens.
Classification tasks: cosine of the logits per sample (per real token for token-level tasks),
top-1 agreement and the max abs diff of the logits.

The thresholds are gate fields (out of the key): None means the default for the precision the
engine holds (see DEFAULTS), so one recipe line `parity: {}` fits fp32, fp16 and int8 engines.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.runtime import hf
from orchestrator.step import Resources, StepContext, Verdict
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
    max_length: int = Field(128, ge=2, description="Tokenizer truncation length.")
    max_samples: int = Field(64, ge=1, description="At most this many sample lines are compared.")
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
    version = "1"
    description = "Compare the engine's outputs with the PyTorch reference on the sample texts."
    inputs = ("model", "source", "samples", "reference")
    outputs = {"reference": "reference/"}
    output_formats = {"reference": "parity-reference"}
    # One shared task runs the PyTorch reference on the samples; params that only concern the
    # engine are normalized so that every target shares it.
    reference = {"precision_hint": "f32"}
    resources = Resources(cpu=2, memory_gb=4)
    gate_fields = GATES

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
        cosines: list[Any] = []
        agree: list[Any] = []
        max_diff = 0.0
        batches = _load_reference(ctx.input("reference")) if "reference" in ctx.inputs \
            else _reference_batches(ctx)[0]
        for batch, ref in batches:
            mask = batch["attention_mask"]
            out = engine.run(batch)
            if ref.shape != out.shape:
                raise ValueError(f"the engine's output has shape {out.shape}, the reference's "
                                 f"{ref.shape}")
            real = mask.astype(bool)
            diff = np.abs(ref - out)
            max_diff = max(max_diff, float((diff[real] if ref.ndim == 3 else diff).max()))
            if task == "feature-extraction":
                cosines.append((hf.mean_pool(ref, mask) * hf.mean_pool(out, mask)).sum(axis=1))
            else:
                r, o = (ref[real], out[real]) if ref.ndim == 3 else (ref, out)
                cosines.append(_cosine(r, o))
                agree.append(r.argmax(axis=-1) == o.argmax(axis=-1))
        cos = np.concatenate(cosines).astype(np.float64)
        metrics: dict[str, Any] = {
            "samples": sum(len(b["attention_mask"]) for b, _ in batches),
            "task": task,
            "precision": detect_precision(model),
            "max_abs_diff": _sig(max_diff),
            "mean_cosine": _sig(float(cos.mean())),
            "min_cosine": _sig(float(cos.min())),
            "runtime": engine.describe(),
        }
        if agree:
            metrics["top1_agreement"] = _sig(float(np.concatenate(agree).mean()))
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
                "batches": len(batches), "task": ctx.model.task, "runtime": runtime}

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
    for i in range(0, len(texts), p.batch_size):
        enc = hf.encode(tokenizer, texts[i:i + p.batch_size], max_length=p.max_length)
        batch = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}
        out.append((batch, reference.run(batch)))
    return out, reference.describe()


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
