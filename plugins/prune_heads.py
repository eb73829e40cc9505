"""prune-heads: remove the least useful attention heads of a BERT-style model (a worked example).

How to write a step: define a ``Step`` subclass in a Python file listed under ``plugins:`` in
the recipe. The registry imports the file and registers every ``Step`` subclass that defines a
``name``; the file's content digest is its version in the cache key (editing it rebuilds).

- ``name``: what recipes write in ``steps:`` (lowercase letters, digits and '-').
- ``version``: bump it when the same inputs and params would now give a different output.
- ``description``: one line for ``deploy-build steps`` and the docs.
- ``Params``: a pydantic model with ``extra="forbid"`` (a typo in a recipe is an error, not an
  ignored key); its validated values, defaults filled in, enter the cache key.
- ``inputs``: what ``run`` reads: ``model`` (the previous step's output, or the recipe's model
  source for the first step), ``source``, ``samples`` (absent when the recipe has none).
- ``outputs``: name -> file name; a trailing '/' makes a folder, stored as a tree. A transform
  declares ``model``: the next step's ``model`` input.
- ``input_formats`` / ``output_formats``: the formats (``hf-model``, ``onnx``, ``openvino-ir``,
  ``torchscript``, ... or one of your own) of the ``model`` input and of each output. A recipe
  whose chain does not fit is refused when it loads; an output is validated before it is cached.
- ``resources`` (what one run needs) and ``toolchain`` (distributions whose versions enter the key).
- ``run(ctx)``: writes each output at ``ctx.output(name)``, returns JSON-able metrics.

Heavy imports (torch, transformers, ...) belong inside ``run`` and its helpers: the registry
imports this file to validate every recipe that lists it, and planning must stay fast.

This step scores each head by ablation (zero its slice of the attention output; importance =
1 - cosine between the mean-pooled sample embeddings with and without it) and removes the lowest
``fraction`` of each layer, or exactly ``heads``. Transformers 5 dropped ``head_mask``,
``prune_heads()`` and ``config.pruned_heads``, and BERT derives the head size from
hidden_size / num_attention_heads, so no stock config describes fewer heads. The output folder
carries ``modeling_pruned_heads.py`` (below) and an ``auto_map`` to it; it loads with
``from_pretrained(folder, trust_remote_code=True)``: the recipe must set ``trust_remote_code: true``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.runtime import hf
from orchestrator.step import Resources, Step, StepContext

MODULE = "modeling_pruned_heads"
# Written next to the weights; also executed here, so one piece of code prunes the model now and
# rebuilds its shapes when from_pretrained loads it (Pruned<Class> for any transformers class).
MODELING = '''"""A model pruned by the deploy-build prune-heads step (heads listed in config.pruned_heads)."""

import torch
import transformers


def _sliced(linear, index, dim):
    w, index = linear.weight, index.to(linear.weight.device)
    out_f, in_f = (len(index), w.shape[1]) if dim == 0 else (w.shape[0], len(index))
    new = torch.nn.Linear(in_f, out_f, linear.bias is not None, w.device, w.dtype)
    with torch.no_grad():
        new.weight.copy_(w.index_select(dim, index))
        if linear.bias is not None:
            new.bias.copy_(linear.bias if dim == 1 else linear.bias.index_select(0, index))
    return new


def prune_attention_heads(model, pruned_heads):
    """Remove {layer: [head, ...]} from the attention layers, in place."""
    for layer, heads in pruned_heads.items():
        att = model.base_model.encoder.layer[int(layer)].attention
        sa, size = att.self, att.self.attention_head_size
        keep = [h for h in range(sa.num_attention_heads) if h not in set(heads)]
        index = torch.tensor([h * size + i for h in keep for i in range(size)])
        sa.query, sa.key, sa.value = (_sliced(getattr(sa, n), index, 0)
                                      for n in ("query", "key", "value"))
        att.output.dense = _sliced(att.output.dense, index, 1)
        sa.num_attention_heads, sa.all_head_size = len(keep), len(keep) * size


def __getattr__(name):
    base = name.startswith("Pruned") and getattr(transformers, name[len("Pruned"):], None)
    if not isinstance(base, type):
        raise AttributeError(name)

    def __init__(self, config, *args, **kwargs):
        base.__init__(self, config, *args, **kwargs)
        prune_attention_heads(self, config.pruned_heads)

    cls = type(name, (base,), {"__init__": __init__, "__module__": __name__})
    globals()[name] = cls
    return cls
'''


class PruneHeadsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    heads: dict[int, list[int]] | None = Field(
        None, description="Heads to prune per layer, e.g. {0: [1, 3]} (0-based); when given, "
        "no importance is measured and 'fraction' is ignored.")
    fraction: float = Field(0.25, ge=0, lt=1, description="Fraction of each layer's heads to "
                            "prune (rounded down; at least one head stays) when 'heads' is unset.")
    max_samples: int = Field(32, ge=1, description="Sample lines used to score the heads and "
                             "to compare the pruned model with the original.")


class PruneHeads(Step[PruneHeadsParams]):
    name = "prune-heads"
    version = "1"
    description = ("Prune the least important attention heads of a BERT-style Hugging Face model "
                   "(ablation importance on the samples); needs model.trust_remote_code: true.")
    inputs = ("model", "samples")
    outputs = {"model": "hf/"}
    input_formats = {"model": ("hf-model",)}  # what the previous step (or the source) must give
    output_formats = {"model": "hf-model"}  # validated after run, checked against the next step
    resources = Resources(cpu=2, memory_gb=4)
    toolchain = ("torch", "transformers")

    def run(self, ctx: StepContext[PruneHeadsParams]) -> dict[str, Any]:
        import torch

        p: PruneHeadsParams = ctx.params
        if not ctx.model.trust_remote_code:
            raise ValueError("prune-heads writes a model that transformers loads only with the "
                             f"code saved next to it ({MODULE}.py); set trust_remote_code: true "
                             "under 'model:' in the recipe")
        torch.set_num_threads(max(1, ctx.threads))
        folder = ctx.input("model")
        model = hf.load_model(folder, ctx.model.task, ctx.model.trust_remote_code)
        tokenizer = hf.load_tokenizer(folder, ctx.model.trust_remote_code)
        counts = _head_counts(model)
        samples = hf.samples_for(ctx, "head importance", limit=p.max_samples)
        enc = hf.encode(tokenizer, samples, max_length=128, tensors="pt")
        before = _embed(model, enc)
        scores: dict[int, list[float]] = {}
        if p.heads is not None:
            pruned = _checked(p.heads, counts)
        else:
            scores = _ablation_scores(model, enc, before, counts)
            pruned = {}
            for layer, layer_scores in scores.items():
                n = min(int(p.fraction * counts[layer]), counts[layer] - 1)
                order = sorted(range(counts[layer]), key=lambda h: (layer_scores[h], h))
                if n:
                    pruned[layer] = sorted(order[:n])
        params_before = sum(t.numel() for t in model.parameters())
        code: dict[str, Any] = {"__name__": MODULE}
        exec(compile(MODELING, f"{MODULE}.py", "exec"), code)  # our own code, see MODELING
        code["prune_attention_heads"](model, pruned)
        cosine = (before * _embed(model, enc)).sum(axis=1)

        out = ctx.output("model")
        model.config.pruned_heads = by_name = {str(k): v for k, v in pruned.items()}
        model.config.auto_map = {
            "AutoModel": f"{MODULE}.Pruned{type(model.base_model).__name__}",
            hf.TASK_AUTO[ctx.model.task]: f"{MODULE}.Pruned{type(model).__name__}",
        }
        model.save_pretrained(str(out))
        (out / f"{MODULE}.py").write_text(MODELING)
        tokenizer.save_pretrained(str(out))
        return {
            "method": "explicit" if p.heads is not None else "ablation",
            "pruned_heads": by_name,
            "importance": {str(layer): [_sig(s) for s in v] for layer, v in scores.items()},
            "heads_before": sum(counts),
            "heads_after": sum(counts) - sum(len(h) for h in pruned.values()),
            "parameters_before": params_before,
            "parameters_after": sum(t.numel() for t in model.parameters()),
            "embedding_cosine_mean": _sig(float(cosine.mean())),
            "embedding_cosine_min": _sig(float(cosine.min())),
            "samples": len(samples),
        }


def _head_counts(model: Any) -> list[int]:
    """Heads per layer; refuses models without the BERT attention layout or already pruned."""
    if hasattr(model.config, "pruned_heads"):
        raise ValueError("the input model was already pruned by prune-heads; prune once, with "
                         "the union of the heads")
    import torch

    try:
        atts = [layer.attention for layer in model.base_model.encoder.layer]
        ok = all(isinstance(m, torch.nn.Linear) for a in atts
                 for m in (a.self.query, a.self.key, a.self.value, a.output.dense))
    except AttributeError:
        ok = False
    if not ok:
        raise ValueError("prune-heads supports BERT-style encoders (encoder.layer[i].attention"
                         f".self.query/key/value and .output.dense); {type(model).__name__} "
                         "has another layout")
    return [int(a.self.num_attention_heads) for a in atts]


def _checked(heads: dict[int, list[int]], counts: list[int]) -> dict[int, list[int]]:
    """The explicit heads, sorted and checked against the model (a layer keeps one head)."""
    for layer, hs in heads.items():
        if not 0 <= layer < len(counts):
            raise ValueError(f"heads: layer {layer} does not exist (layers 0..{len(counts) - 1})")
        if not set(hs) <= set(range(counts[layer])) or len(set(hs)) == counts[layer]:
            raise ValueError(f"heads: layer {layer} has heads 0..{counts[layer] - 1}; got {hs} "
                             "(keep at least one)")
    return {layer: sorted(set(hs)) for layer, hs in sorted(heads.items()) if hs}


def _embed(model: Any, enc: Any) -> Any:
    """Mean-pooled, L2-normalized last hidden state of each sample (numpy)."""
    import torch

    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states[-1]
    return hf.mean_pool(hidden.double().numpy(), enc["attention_mask"].numpy())


def _ablation_scores(model: Any, enc: Any, base: Any, counts: list[int]) -> dict[int, list[float]]:
    """1 - cosine(embedding, embedding with one head's output zeroed), mean over the samples."""
    scores: dict[int, list[float]] = {}
    for i, layer in enumerate(model.base_model.encoder.layer):
        size = layer.attention.self.attention_head_size
        scores[i] = []
        for head in range(counts[i]):
            cols = slice(head * size, (head + 1) * size)

            def zero(_m: Any, args: tuple[Any, ...], cols: slice = cols) -> tuple[Any, ...]:
                x = args[0].clone()
                x[..., cols] = 0
                return (x, *args[1:])

            hook = layer.attention.output.dense.register_forward_pre_hook(zero)
            try:
                emb = _embed(model, enc)
            finally:
                hook.remove()
            scores[i].append(float(1.0 - (base * emb).sum(axis=1).mean()))
    return scores


def _sig(x: float) -> float:
    return float(f"{x:.6g}")

