"""The prune-heads plugin (plugins/prune_heads.py): run directly, reloaded, and through the registry."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import FatalError
from orchestrator.hashing import sha256_file
from orchestrator.registry import Registry
from orchestrator.step import ModelInfo, StepContext

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "prune_heads.py"


@pytest.fixture(scope="module")
def step_cls() -> Any:
    (info,) = Registry(entry_points=False).load_file(PLUGIN)
    return info.cls


def run_step(cls: Any, model_dir: Path, out: Path, samples: Path | None = None,
             trust_remote_code: bool = True, **params: Any) -> tuple[Path, dict[str, Any]]:
    inputs = {"model": model_dir} | ({"samples": samples} if samples else {})
    ctx = StepContext(params=cls.Params(**params), inputs=inputs, out_dir=out,
                      outputs=dict(cls.outputs), hardware={"device": "cpu"},
                      model=ModelInfo(task="feature-extraction",
                                      trust_remote_code=trust_remote_code), threads=1)
    metrics = cls().run(ctx)
    return ctx.output("model"), metrics


def heads_per_layer(model: Any) -> list[int]:
    return [layer.attention.self.query.out_features // layer.attention.self.attention_head_size
            for layer in model.encoder.layer]


def n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def ablation(step_cls: Any, tiny_model_dir: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("prune")
    samples = tmp / "samples.txt"
    samples.write_text("the quick brown fox\n\nhello world\na short test sentence\n")
    return run_step(step_cls, tiny_model_dir, tmp / "out", samples=samples, fraction=0.25)


def test_ablation_prunes_one_head_per_layer_and_loads_back(
    ablation: tuple[Path, dict[str, Any]], tiny_model_dir: Path
) -> None:
    from transformers import AutoModel

    out, metrics = ablation
    assert (out / "model.safetensors").is_file() and (out / "modeling_pruned_heads.py").is_file()
    assert (out / "tokenizer.json").is_file() or (out / "vocab.txt").is_file()
    original = AutoModel.from_pretrained(tiny_model_dir)
    pruned = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert heads_per_layer(original) == [4, 4]
    assert heads_per_layer(pruned) == [3, 3]
    assert n_params(pruned) < n_params(original)
    assert metrics["method"] == "ablation"
    assert {k: len(v) for k, v in metrics["pruned_heads"].items()} == {"0": 1, "1": 1}
    assert (metrics["heads_before"], metrics["heads_after"]) == (8, 6)
    assert metrics["parameters_before"] == n_params(original)
    assert metrics["parameters_after"] == n_params(pruned)
    assert metrics["samples"] == 3
    for layer, (head,) in metrics["pruned_heads"].items():
        scores = metrics["importance"][layer]
        assert len(scores) == 4 and scores[head] == min(scores)
    assert 0 < metrics["embedding_cosine_min"] <= metrics["embedding_cosine_mean"] <= 1


def test_explicit_heads_are_honored_and_exact(step_cls: Any, tiny_model_dir: Path,
                                              tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    heads = {0: [2, 1], 1: [3]}
    out, metrics = run_step(step_cls, tiny_model_dir, tmp_path / "out", heads=heads)
    assert metrics["method"] == "explicit" and metrics["importance"] == {}
    assert metrics["pruned_heads"] == {"0": [1, 2], "1": [3]}
    assert (metrics["heads_before"], metrics["heads_after"]) == (8, 5)
    pruned = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    assert heads_per_layer(pruned) == [2, 3]
    assert metrics["parameters_after"] == n_params(pruned) < metrics["parameters_before"]

    # Same outputs as the original model with those heads' outputs zeroed.
    original = AutoModel.from_pretrained(tiny_model_dir).eval()
    for layer, hs in heads.items():
        def zero(_m: Any, args: tuple[Any, ...], hs: list[int] = hs) -> tuple[Any, ...]:
            x = args[0].clone()
            for h in hs:
                x[..., h * 8:(h + 1) * 8] = 0
            return (x,)

        original.encoder.layer[layer].attention.output.dense.register_forward_pre_hook(zero)
    enc = AutoTokenizer.from_pretrained(out)(["hello world", "a test"], padding=True,
                                              return_tensors="pt")
    with torch.no_grad():
        want = original(**enc).last_hidden_state
        got = pruned(**enc).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_output_exports_to_onnx(step_cls: Any, ablation: tuple[Path, dict[str, Any]],
                                tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from orchestrator.steps.export_onnx import ExportOnnx

    out, _ = ablation
    ctx = StepContext(params=ExportOnnx.Params(), inputs={"model": out}, out_dir=tmp_path,
                      outputs=dict(ExportOnnx.outputs), hardware={"device": "cpu"},
                      model=ModelInfo(task="feature-extraction", trust_remote_code=True))
    metrics = ExportOnnx().run(ctx)
    assert ctx.output("model").is_file()
    assert metrics["outputs"] == ["last_hidden_state"]


def test_bad_use_is_refused(step_cls: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValueError, match="trust_remote_code: true"):
        run_step(step_cls, tiny_model_dir, tmp_path / "a", trust_remote_code=False)
    with pytest.raises(ValueError, match="keep at least one"):
        run_step(step_cls, tiny_model_dir, tmp_path / "b", heads={0: [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        run_step(step_cls, tiny_model_dir, tmp_path / "c", heads={5: [0]})
    for bad in ({"fraction": 1.0}, {"fraction": -0.1}, {"max_samples": 0}, {"head": {0: [1]}}):
        with pytest.raises(ValidationError):
            step_cls.Params(**bad)


def test_registry_accepts_the_plugin(tmp_path: Path) -> None:
    copy = tmp_path / "prune_heads.py"
    shutil.copy(PLUGIN, copy)
    reg = Registry(entry_points=False)
    (info,) = reg.load_file(copy)
    assert info.name == "prune-heads" and reg.get("prune-heads") is info
    assert info.dist_version == sha256_file(copy)
    assert info.origin == f"plugin {copy}"


@pytest.mark.parametrize(("old", "new", "problem"), [
    ('model_config = ConfigDict(extra="forbid")', "pass", "'Params' must forbid unknown fields"),
    ('    version = "1"\n', "", "'version' must be a non-empty string"),
])
def test_registry_rejects_a_broken_copy(tmp_path: Path, old: str, new: str,
                                        problem: str) -> None:
    text = PLUGIN.read_text()
    assert old in text
    broken = tmp_path / "prune_heads_broken.py"
    broken.write_text(text.replace(old, new))
    with pytest.raises(FatalError) as e:
        Registry(entry_points=False).load_file(broken)
    assert str(broken) in str(e.value) and problem in str(e.value)
