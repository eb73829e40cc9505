"""Shared helpers for steps that load a Hugging Face model folder (imports torch lazily)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TASK_AUTO = {
    "feature-extraction": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "fill-mask": "AutoModelForMaskedLM",
}


# Tokenizers without a limit of their own say model_max_length = 1e30 (transformers'
# VERY_LARGE_INTEGER); no transformer takes more than this many tokens.
SANE_MAX_LENGTH = 1_000_000
# Models whose position ids start after the padding index: max_position_embeddings counts
# pad_token_id + 1 positions no token uses (RoBERTa: 514 positions, 512 tokens).
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "mpnet",
                    "data2vec-text", "ibert", "roberta-prelayernorm", "markuplm"}


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _count(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 2 <= value <= SANE_MAX_LENGTH
    return int(value) if ok else None


def max_sequence_length(folder: Path) -> tuple[int, str] | None:
    """The most tokens the model in ``folder`` takes, and which file says so: its
    sentence-transformers config's ``max_seq_length`` (what the model was trained and is served
    with), else the tokenizer's ``model_max_length`` when it is a real limit, else the positions
    ``config.json`` gives it; never more than those positions. None when no file says. Reads JSON
    only (no transformers import)."""
    config = _json(folder / "config.json")
    positions = _count(config.get("max_position_embeddings"))
    if positions is not None and config.get("model_type") in OFFSET_POSITIONS:
        positions -= int(config.get("pad_token_id") or 0) + 1
    found = [(_count(_json(folder / "sentence_bert_config.json").get("max_seq_length")),
              "sentence_bert_config.json: max_seq_length"),
             (_count(_json(folder / "tokenizer_config.json").get("model_max_length")),
              "tokenizer_config.json: model_max_length"),
             (positions, "config.json: max_position_embeddings")]
    for value, where in found:
        if value is not None and (positions is None or value <= positions):
            return value, where
    return None


def load_model(folder: Path, task: str, trust_remote_code: bool = False,
               attn_implementation: str | None = "eager") -> Any:
    """The PyTorch model for task, in eval mode, fp32 (eager attention by default: it exports
    to a graph the ONNX Runtime optimizer can fuse)."""
    import transformers

    auto = getattr(transformers, TASK_AUTO[task])
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = auto.from_pretrained(str(folder), **kwargs)
    model.eval()
    return model


def load_tokenizer(folder: Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)


def encode(tokenizer: Any, texts: str | list[str], max_length: int | None = None,
           tensors: str = "np", padding: bool | str = True) -> Any:
    """Tokenize texts for a model (calibration, parity, accuracy, head scoring): padded to the
    longest (or ``padding="max_length"``), truncated to ``max_length`` when given."""
    kwargs: dict[str, Any] = {"padding": padding, "return_tensors": tensors}
    if max_length is not None:
        kwargs.update(truncation=True, max_length=max_length)
    return tokenizer(texts, **kwargs)


def example_inputs(folder: Path, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """The tokenizer of a model folder and a small padded batch of the built-in sentences (torch
    tensors): what exporters and converters trace the model on."""
    tokenizer = load_tokenizer(folder, trust_remote_code)
    return tokenizer, encode(tokenizer, read_samples(None)[:2], tensors="pt")


def samples_for(ctx: Any, what: str, limit: int | None = None) -> list[str]:
    """The recipe's sample texts for a step; without inputs.samples, 4 built-in sentences and a
    warning (calibration and parity on 4 sentences say little)."""
    path = ctx.inputs.get("samples")
    if path is None:
        ctx.warn(f"the recipe has no inputs.samples: {what} uses 4 built-in sentences; give a file "
                 "of real texts (one per line) for meaningful results")
    return read_samples(path, limit)


def read_samples(path: Path | None, limit: int | None = None) -> list[str]:
    """Non-empty lines of the samples file (a few built-in sentences when there is none)."""
    if path is None:
        lines = [
            "The quick brown fox jumps over the lazy dog.",
            "Deploying transformer models to edge hardware needs careful quantization.",
            "A short one.",
            "How fast does this model run on a CPU with two threads?",
        ]
    else:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    return lines[:limit] if limit else lines


def output_names(task: str) -> list[str]:
    """The ONNX output names a step exports for task (the first is what parity compares)."""
    return ["last_hidden_state"] if task == "feature-extraction" else ["logits"]


def input_names() -> list[str]:
    return ["input_ids", "attention_mask", "token_type_ids"]


def mean_pool(hidden: Any, mask: Any) -> Any:
    """Sentence embedding: mean over the attention mask, L2-normalized (numpy arrays)."""
    import numpy as np

    m = mask[..., None].astype(hidden.dtype)
    summed = (hidden * m).sum(axis=1)
    counts = np.clip(m.sum(axis=1), 1e-9, None)
    emb = summed / counts
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.clip(norm, 1e-12, None)


def positional_wrapper(model: Any, names: list[str], outs: list[str], always_tuple: bool = False) -> Any:
    """A module taking the inputs ``names`` positionally and returning the outputs ``outs`` (one
    tensor when there is one, unless always_tuple): what exporters and converters trace."""
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any) -> Any:
            result = self.model(**dict(zip(names, args, strict=True)), return_dict=True)
            tensors = tuple(result[o] for o in outs)
            return tensors[0] if len(tensors) == 1 and not always_tuple else tensors

    return Wrapper().eval()
