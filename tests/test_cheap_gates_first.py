"""Issue 17, "Cheap gates first": parity (and every untimed check) runs before the benchmark, and a
benchmark is not run when every target using it already failed such a gate; its manifest says
`not measured: parity failed (...)`, which `diff` reads as such, never as a removed benchmark.
On real engines: a tiny BERT, exported and quantized to int8, checked by ONNX Runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import main

pytestmark = pytest.mark.slow

RECIPE = """\
name: q
model:
  source: ./model
inputs:
  shapes: {{batch: [1], sequence: [16]}}
targets:
{targets}"""

TARGET = """\
  {name}:
    steps:
      - export-onnx: {{opset: 17}}
      - ort-quantize: {{mode: dynamic, per_channel: false}}
    checks:
      parity: {{max_abs_diff: {diff}}}
      benchmark: {{threads: 1, warmup: 1, min_runs: 4, max_runs: 20, window: 2, max_seconds: 2}}
"""


def _build(root: Path, capsys: pytest.CaptureFixture[str], **diffs: float) -> tuple[int, dict[str, Any], str]:
    targets = "".join(TARGET.format(name=n, diff=d) for n, d in diffs.items())
    (root / "q.yaml").write_text(RECIPE.format(targets=targets))
    capsys.readouterr()
    rc = main([str(root / "q.yaml"), "--cache", str(root / "cache"), "--out", str(root / "build"),
               "--json"])
    captured = capsys.readouterr()
    return rc, {t["label"]: t for t in json.loads(captured.out)["tasks"]}, captured.err


def test_a_target_that_fails_parity_is_never_timed(tmp_path: Path, tiny_model_dir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    rc, tasks, err = _build(tmp_path, capsys, a=0.0)  # int8 differs from fp32: parity fails
    assert rc == 2
    bench = tasks["a/check:benchmark"]
    assert bench["status"] == "skip"
    assert bench["reasons"][0].startswith("not measured: parity failed (max abs diff ")
    assert "RUN   a/check:benchmark" not in err
    lines = err.splitlines()
    assert any(x.startswith("done  a/check:parity") for x in lines)
    m = json.loads((tmp_path / "build/q/a/manifest.json").read_text())
    assert m["status"] == "failed" and m["artifacts"] == []
    assert m["benchmark"] == {"not_measured": bench["reasons"][0]}
    assert any(f.startswith("check parity: max abs diff") for f in m["failures"])
    failed = tmp_path / "failed"
    shutil.copytree(tmp_path / "build", failed)
    capsys.readouterr()  # explain says the planned benchmark would be skipped, and why
    assert main(["explain", str(tmp_path / "q.yaml"), "--cache", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "build")]) == 0
    assert "- but a build skips it: not measured: parity failed (max abs diff" in \
        capsys.readouterr().out

    # the gate relaxed: parity is judged again from the cache, the benchmark runs now (the
    # skipped one left no cache entry)
    rc, tasks, _ = _build(tmp_path, capsys, a=10.0)
    assert rc == 0
    assert tasks["a/check:parity"]["status"] == "hit"
    assert tasks["a/check:benchmark"]["status"] == "run"
    capsys.readouterr()
    assert main(["diff", str(tmp_path / "build"), str(failed), "--format", "json"]) == 0
    c = json.loads(capsys.readouterr().out)["targets"]["q/a"]
    assert {p["verdict"] for p in c["latency"].values()} == {"not measured"}
    assert main(["diff", str(tmp_path / "build"), str(failed)]) == 0
    assert "  benchmark: not measured: parity failed (max abs diff" in capsys.readouterr().out


def test_a_benchmark_shared_with_a_passing_target_still_runs(
        tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    rc, tasks, _ = _build(tmp_path, capsys, strict=0.0, lax=10.0)
    assert rc == 2  # strict fails its parity gate
    assert tasks["strict/check:benchmark"]["status"] == "run"  # one task, shared with lax
    lax = json.loads((tmp_path / "build/q/lax/manifest.json").read_text())
    strict = json.loads((tmp_path / "build/q/strict/manifest.json").read_text())
    assert lax["status"] == "ok" and lax["benchmark"]["results"]
    assert strict["status"] == "failed" and strict["benchmark"]["results"]  # measured anyway


def test_untimed_checks_are_ordered_before_the_speed_checks() -> None:
    from orchestrator.plan.graph import compile_graph
    from orchestrator.recipe import load_recipe

    repo = Path(__file__).resolve().parents[1]
    graph = compile_graph([load_recipe(repo / "recipes" / "bert-edge.yaml")])
    for tp in graph.targets:
        bench = graph.task(tp.checks["benchmark"].task)
        assert set(tp.checks["parity"].ids()) <= set(bench.after), tp.name
        assert not graph.task(tp.checks["parity"].task).after
