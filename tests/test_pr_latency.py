"""Issue 17, "Paired A/B for pull requests", on real engines (a tiny BERT exported to ONNX, timed
by ONNX Runtime): the README's PR gate `diff --fail-on 'latency+10%'` passes an unchanged engine
re-measured beside a busy loop and fails an engine made slower, on the speed-up each run paired
with PyTorch and on a paired A/B of the two engines (`diff --rebench`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FIXTURES

from orchestrator.cli import main

pytestmark = pytest.mark.slow

RECIPE = """\
name: lat
plugins: [slow_steps.py]
model:
  source: ./model
inputs:
  shapes: {{batch: [1], sequence: [16]}}
targets:
  fe:
    steps:
      - export-onnx: {{opset: 17}}
      - onnx-slow-down: {{matmuls: {n}}}
    checks:
      benchmark: {{threads: 1, warmup: 2, min_runs: 10, max_runs: 60, window: 5, max_seconds: 1.5}}
"""

HOG = "while True:\n    pass\n"


@pytest.fixture
def busy() -> Iterator[None]:
    """One busy loop per CPU, in other processes, for the length of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(os.cpu_count() or 1)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


def _build(root: Path, n: int, keep: str, *extra: str) -> Path:
    (root / "lat.yaml").write_text(RECIPE.format(n=n))
    rc = main([str(root / "lat.yaml"), "--cache", str(root / "cache"), "--out",
               str(root / "build"), *extra])
    assert rc == 0
    dest = root / keep
    shutil.copytree(root / "build", dest)  # what a PR's base and head would each have built
    return dest


def test_the_pr_latency_gate_passes_an_unchanged_engine_and_fails_a_slower_one(
        tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str],
        request: pytest.FixtureRequest) -> None:
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    shutil.copy(FIXTURES / "slow_steps.py", tmp_path / "slow_steps.py")
    base = _build(tmp_path, 0, "base")
    request.getfixturevalue("busy")  # the same engine, re-measured on a loaded machine
    same = _build(tmp_path, 0, "same", "--rebench")
    old = json.loads((base / "lat/fe/manifest.json").read_text())["benchmark"]
    new = json.loads((same / "lat/fe/manifest.json").read_text())["benchmark"]
    assert old["key"] == new["key"]
    capsys.readouterr()
    assert main(["diff", str(base), str(same), "--fail-on", "latency+10%"]) == 0
    out = capsys.readouterr().out
    assert "REGRESSION" not in out
    if old["results"]["b1_s16"]["median_ms"] != new["results"]["b1_s16"]["median_ms"]:
        assert "(the same engine re-measured: not judged)" in out, out
    slow = _build(tmp_path, 40, "slow")  # the head's engine does useless work
    assert main(["diff", str(base), str(slow), "--fail-on", "latency+10%"]) == 2
    out = capsys.readouterr().out
    assert "REGRESSION lat/fe: latency+10%: b1_s16 +" in out
    assert "through the speed-up vs PyTorch" in out
    assert main(["diff", str(base), str(slow), "--rebench", "--fail-on", "latency+10%",
                 "--cache", str(tmp_path / "cache"), "--format", "json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    point = doc["targets"]["lat/fe"]["latency"]["b1_s16"]
    assert point["basis"] == "paired A/B" and point["verdict"] == "slower"
    assert point["interval_pct"][0] > 10, point
    assert doc["regressions"] and "paired A/B" in doc["regressions"][0]
    # the base engine from the cache by its digest when the folder lacks it
    (base / "lat/fe/model.onnx").unlink()
    assert main(["diff", str(base), str(slow), "--rebench", "--cache", str(tmp_path / "cache")]) == 0
    assert "latency b1_s16: head/base +" in capsys.readouterr().out
    assert main(["diff", str(base), str(slow), "--rebench", "--cache", str(tmp_path / "none")]) == 1
    assert "the base engine of lat/fe (model.onnx" in capsys.readouterr().err
