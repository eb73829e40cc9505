"""Olive user script for benchmarks/olive_compare.py (runs inside Olive's venv, not the project's).

- ``load_model``/``dummy_inputs``: the PyTorch model as deploy-build's export-onnx traces it (eager
  attention, the three inputs passed positionally). Olive's own ``HfModel`` input cannot be used
  here: Olive 0.13 hands the legacy exporter a dict of inputs, which torch 2.13 turns into keyword
  arguments that transformers 5's BertModel.forward rejects ("got multiple values for argument
  'use_cache'"); its dynamo exporter works but yields a graph on which Attention does not fuse.
- ``mean_cosine``: the custom metric (``evaluate_func``), deploy-build's parity measure: mean and
  min cosine of mean-pooled, L2-normalized embeddings of the recipe's sentences, the ONNX model
  (any object with a ``model_path``, such as Olive's ONNXModelHandler) against the PyTorch model
  (batches of 8, padded to the longest, truncated to 128 tokens, 2 threads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _torch_model(model_dir: str) -> Any:
    from transformers import AutoModel

    return AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()


def load_model(model_path: str) -> Any:
    import torch

    class Positional(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    return Positional(_torch_model(model_path))


def dummy_inputs(model: Any = None) -> tuple[Any, ...]:
    import torch

    ids = torch.randint(1000, 2000, (2, 16), dtype=torch.int64)
    return ids, torch.ones_like(ids), torch.zeros_like(ids)


def _pool(hidden: Any, mask: Any) -> Any:
    import numpy as np

    m = mask[..., None].astype(hidden.dtype)
    emb = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
    return emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)


def _session(model: Any, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(model.model_path), opts, providers=["CPUExecutionProvider"])


def mean_cosine(model: Any, device: Any, execution_providers: Any, model_dir: str,
                samples: str, threads: int = 2, batch_size: int = 8) -> dict[str, float]:
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    texts = [t for t in Path(samples).read_text().splitlines() if t.strip()]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    reference = _torch_model(model_dir)
    session = _session(model, threads)
    cosines = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=128,
                        return_tensors="np")
        batch = {n: np.asarray(enc[n], dtype=np.int64) for n in INPUTS}
        with torch.no_grad():
            ref = reference(**{n: torch.from_numpy(v) for n, v in batch.items()}).last_hidden_state
        mask = batch["attention_mask"]
        out = session.run(None, batch)[0]
        cosines.append((_pool(ref.numpy(), mask) * _pool(out, mask)).sum(axis=1))
    cos = np.concatenate(cosines).astype(np.float64)
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
