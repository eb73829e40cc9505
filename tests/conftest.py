"""Shared fixtures: a tiny BertConfig model folder (built in seconds) and the fake steps."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests import OpenVINO/NNCF in-process too: keep their telemetry off, as builds do.
os.environ["CI"] = "true"
os.environ.setdefault("NNCF_CI", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIXTURES = Path(__file__).parent / "fixtures"
WORDS = [
    'the', 'quick', 'brown', 'fox', 'jumps', 'over', 'lazy', 'dog', 'a', 'short', 'one', 'how',
    'fast', 'does', 'this', 'model', 'run', 'on', 'cpu', 'with', 'two', 'threads', 'deploying',
    'transformer', 'models', 'to', 'edge', 'hardware', 'needs', 'careful', 'quantization', 'is',
    'are', 'was', 'were', 'be', 'been', 'hello', 'world', 'good', 'bad', 'test', 'sentence',
    'example', 'of', 'text', 'and', 'or', 'not',
]


def make_tiny_model(folder: Path, task: str = "feature-extraction", seed: int = 0,
                    layers: int = 2, heads: int = 4, hidden: int = 32) -> Path:
    """Save a tiny random BERT (with a word-level tokenizer) as a Hugging Face folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)), ".", "?", ","]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.save_pretrained(str(folder))
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=hidden * 2,
                        max_position_embeddings=256, num_labels=3)
    torch.manual_seed(seed)
    cls = BertForSequenceClassification if task == "sequence-classification" else BertModel
    model = cls(config).eval()
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(autouse=True)
def private_lock_folder(tmp_path_factory: pytest.TempPathFactory,
                        monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own machine-lock folder (inherited by the builds it starts), so no test
    waits for, or blocks, a real build of this user on this machine (see orchestrator.store.locks).
    A lock wait that still happens inside a test gives up after 10 minutes instead of hanging."""
    folder = tmp_path_factory.mktemp("locks")
    monkeypatch.setenv("DEPLOY_BUILD_LOCK_DIR", str(folder))
    monkeypatch.setenv("DEPLOY_BUILD_LOCK_TIMEOUT", "600")
    return folder


@pytest.fixture(autouse=True)
def no_build_outlives_its_test() -> Iterator[None]:
    """Builds a test started in the background (tests/reliability/helpers.popen_cli) are killed,
    with their workers, when the test ends, whether it passed or not."""
    yield
    helpers = sys.modules.get("helpers")
    if helpers is not None and hasattr(helpers, "kill_started"):
        helpers.kill_started()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tinycls") / "model", task="sequence-classification")


@pytest.fixture
def fake_steps(tmp_path: Path) -> Path:
    """A copy of tests/fixtures/fake_steps.py next to the test's recipes."""
    dest = tmp_path / "fake_steps.py"
    shutil.copy(FIXTURES / "fake_steps.py", dest)
    return dest


class Project:
    """A throw-away project: a fake model folder, the fake steps plugin, recipes, cache, outputs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = root / "cache"
        self.out = root / "build"
        model = root / "model"
        model.mkdir()
        (model / "weights.bin").write_bytes(b"weights-v1")
        (model / "config.json").write_text('{"hidden": 4}')
        shutil.copy(FIXTURES / "fake_steps.py", root / "fake_steps.py")

    def recipe(self, text: str, name: str = "r.yaml") -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def run(self, *args: str, capsys: pytest.CaptureFixture[str] | None = None) -> int:
        from orchestrator.cli import main

        return main([*args, "--cache", str(self.cache), "--out", str(self.out)])

    def build_json(self, recipe: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict:
        import json

        capsys.readouterr()
        rc = self.run(str(recipe), "--json", *args)
        captured = capsys.readouterr()
        summary = json.loads(captured.out)
        summary["rc"] = rc
        summary["err"] = captured.err
        summary["by_label"] = {t["label"]: t for t in summary["tasks"]}
        return summary


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


FAKE_RECIPE = """\
name: demo
plugins: [fake_steps.py]
model:
  source: ./model
targets:
  a:
    steps:
      - fake-upper: {suffix: "!"}
      - fake-tree: {files: 2}
    checks:
      fake-length: {max_bytes: 1000}
  b:
    steps:
      - fake-upper: {suffix: "!"}
      - fake-const: {text: hello}
"""
