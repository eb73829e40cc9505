"""Whole builds through the CLI on a tiny BERT: every real step, the checks, gates and plugins."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = "benchmark: {batch: [1], sequence: [16], threads: 1, warmup: 1, min_runs: 4, max_runs: 12, " \
        "window: 4, max_seconds: 2, profile: true}"

RECIPE = """\
name: tiny
model:
  source: @MODEL@
inputs:
  shapes: {batch: [1], sequence: [16]}
  samples: @SAMPLES@
targets:
  ort-fp32:
    steps:
      - export-onnx: {opset: 17}
      - ort-optimize: {}
    checks:
      parity: {}
      @BENCH@
  ort-int8:
    steps:
      - export-onnx: {opset: 17}
      - ort-optimize: {}
      - ort-quantize: {mode: dynamic}
    checks:
      parity: {}
  ort-int8-strict:
    steps:
      - export-onnx: {opset: 17}
      - ort-optimize: {}
      - ort-quantize: {mode: dynamic, per_channel: false}
    checks:
      parity: {mean_cosine: 0.9999999, min_cosine: 0.9999999}
  openvino-int8:
    steps:
      - export-onnx: {opset: 17}
      - openvino-convert: {}
      - nncf-quantize: {preset: performance}
    checks:
      parity: {mean_cosine: 0.98, min_cosine: 0.95}
      @BENCH@
"""


def run_cli(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "NNCF_CI")}
    env["HOME"] = str(home)  # telemetry would land under $HOME/intel
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def test_tiny_build_all_runtimes(tiny_model_dir: Path, tmp_path: Path) -> None:
    samples = tmp_path / "samples.txt"
    samples.write_text("the quick brown fox jumps over the lazy dog\nhello world\n"
                       "how fast does this model run on cpu\na short one\n")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE.replace("@MODEL@", str(tiny_model_dir))
                      .replace("@SAMPLES@", samples.name).replace("@BENCH@", BENCH))
    home = tmp_path / "home"
    home.mkdir()
    args = [str(recipe), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--json"]
    p = run_cli(args, home)
    assert p.returncode == 2, p.stderr[-3000:]  # the strict per-tensor target fails its gate
    summary = json.loads(p.stdout)
    assert summary["targets"]["tiny/ort-int8-strict"]["status"] == "failed"
    assert "check parity: min cosine" in p.stderr and "short by" in p.stderr
    for target in ("ort-fp32", "ort-int8", "openvino-int8"):
        assert summary["targets"][f"tiny/{target}"]["status"] == "ok", p.stderr[-3000:]
    # one export and one parity reference, shared by every target; the benchmark measures its
    # PyTorch reference inside its own task (alternated with the engine), so it has no other
    steps = [t["step"] for t in summary["tasks"]]
    assert steps.count("export-onnx") == 1 and steps.count("ort-optimize") == 1
    labels = [t["label"] for t in summary["tasks"]]
    assert sum(1 for x in labels if x.endswith("check:parity:reference")) == 1
    assert not [x for x in labels if x.endswith("check:benchmark:reference")]

    out = tmp_path / "out" / "tiny"
    fp32 = json.loads((out / "ort-fp32" / "manifest.json").read_text())
    assert fp32["checks"]["parity"]["passed"] and fp32["checks"]["parity"]["precision"] == "fp32"
    bench = fp32["benchmark"]
    assert bench["results"]["b1_s16"]["median_ms"] > 0 and bench["speedup"]["b1_s16"] > 0
    assert bench["results"]["b1_s16"]["reference"]["median_ms"] > 0
    assert bench["reference_runtime"]["runtime"] == "pytorch" and "noisy" in bench
    if bench["noisy"]:  # a busy machine: marked in the manifest and said after the build
        assert "noisy machine" in p.stderr and bench["warnings"]
    assert bench["runtime"]["runtime"] == "onnxruntime" and bench["threads"] == 1
    assert bench["profile"]["b1_s16"][0]["op"]  # where the time goes (ORT profiler)
    assert fp32["steps"][1]["metrics"]["fused"]["Attention"] == 2
    assert (out / "ort-fp32" / "model.onnx").is_file()
    ov = json.loads((out / "openvino-int8" / "manifest.json").read_text())
    assert ov["checks"]["parity"]["precision"] == "int8"
    assert ov["checks"]["parity"]["runtime"]["precision_hint"] == "f32"
    assert ov["benchmark"]["runtime"]["runtime"] == "openvino"
    assert (out / "openvino-int8" / "openvino_model.xml").is_file()
    strict = json.loads((out / "ort-int8-strict" / "manifest.json").read_text())
    assert strict["status"] == "failed" and not (out / "ort-int8-strict" / "model.onnx").exists()
    assert not (home / "intel").exists()  # no telemetry from a build

    # only the quantization changes: export and optimize stay hits, the gate re-judges
    recipe.write_text(recipe.read_text().replace("per_channel: false", "per_channel: true")
                      .replace("mean_cosine: 0.9999999, min_cosine: 0.9999999", ""))
    p = run_cli(args, home)
    assert p.returncode == 0, p.stderr[-3000:]
    status = {t["label"]: t["status"] for t in json.loads(p.stdout)["tasks"]}
    assert status["ort-fp32/1:export-onnx"] == "hit" and status["ort-fp32/2:ort-optimize"] == "hit"
    assert status["ort-fp32/check:benchmark"] == "hit"  # keyed: a rebuild does not re-measure
    # per-channel now equals the ort-int8 target's quantization: one shared, cached task
    assert "ort-int8-strict/3:ort-quantize" not in status
    assert status["ort-int8/3:ort-quantize"] == "hit"
    # --rebench re-measures the benchmark (the engine and its PyTorch reference, in one task)
    # and nothing else
    p = run_cli([*args, "-t", "ort-fp32", "--rebench"], home)
    assert p.returncode == 0, p.stderr[-3000:]
    ran = sorted(t["label"] for t in json.loads(p.stdout)["tasks"] if t["status"] == "run")
    assert ran == ["ort-fp32/check:benchmark"]


@pytest.mark.parametrize("heads,pruned,width", [
    ("{0: [1], 1: [0, 2]}", 3, 4),
    # 11 of 12 heads, as fraction 0.1 prunes MiniLM: ONNX Runtime's Attention fusion builds an
    # invalid graph; ort-optimize must notice, keep the other fusions and warn
    ("{0: [1], 1: [5]}", 2, 12),
])
def test_pruned_recipe_with_local_plugin(tmp_path: Path, heads: str, pruned: int, width: int) -> None:
    from conftest import make_tiny_model

    tiny_model_dir = make_tiny_model(tmp_path / "m", heads=width, hidden=8 * width)
    shutil.copy(ROOT / "plugins" / "prune_heads.py", tmp_path / "prune_heads.py")
    recipe = tmp_path / "pruned.yaml"
    recipe.write_text(f"""\
name: pruned
plugins: [prune_heads.py]
model:
  source: {tiny_model_dir}
  trust_remote_code: true
targets:
  pruned:
    steps:
      - prune-heads: {{heads: {heads}}}
      - export-onnx: {{}}
      - ort-optimize: {{}}
    checks:
      parity: {{mean_cosine: 0.5, min_cosine: 0.3, max_abs_diff: 100}}
""")
    home = tmp_path / "home"
    home.mkdir()
    p = run_cli([str(recipe), "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o")], home)
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((tmp_path / "o/pruned/pruned/manifest.json").read_text())
    prune = m["steps"][0]
    assert prune["plugin"]["dist"] == "file:prune_heads.py" and len(prune["plugin"]["version"]) == 64
    assert prune["metrics"]["heads_after"] == prune["metrics"]["heads_before"] - pruned
    assert m["checks"]["parity"]["passed"]
    # the engine computes what the pruned PyTorch model computes: parity against the original
    # equals the pruning's own cost measured by the plugin
    assert m["checks"]["parity"]["mean_cosine"] == pytest.approx(
        prune["metrics"]["embedding_cosine_mean"], abs=1e-5)
    optimize = m["steps"][2]
    if width == 4:
        assert optimize["metrics"]["fused"]["Attention"] == 2 and not optimize["warnings"]
    else:
        assert "Attention" not in optimize["metrics"]["fused"]
        assert "Attention fusion changed the model's outputs" in optimize["warnings"][0]


def test_cuda_target_checks_need_a_gpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    from orchestrator.run.executors.local import cuda_device_ids

    if cuda_device_ids():
        pytest.skip("this machine has a GPU")
    recipe = tmp_path / "gpu.yaml"
    recipe.write_text(f"""\
name: gpu
model: {{source: {tiny_model_dir}}}
targets:
  cpu:
    steps: [{{export-onnx: {{}}}}]
    checks: {{parity: {{}}}}
  edge-gpu:
    hardware: {{device: cuda, accelerator: orin}}
    steps: [{{export-onnx: {{}}}}]
    checks: {{parity: {{}}}}
""")
    p = run_cli([str(recipe), "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--json"],
                tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads(p.stdout)
    tasks = {t["label"]: t for t in s["tasks"]}
    # the export is the same work for both targets: one task
    assert sum(1 for t in s["tasks"] if t["step"] == "export-onnx") == 1
    ref = tasks["edge-gpu/check:parity:reference"]
    why = "needs cuda accelerator orin; this machine has no CUDA device"
    assert ref["status"] == "skip" and ref["reasons"] == [why]
    assert tasks["edge-gpu/check:parity"]["status"] == "skip"
    assert tasks["cpu/check:parity"]["status"] == "run"
    assert s["targets"]["gpu/cpu"]["status"] == "ok"
    # no samples in the recipe: parity says what it compared on
    assert "warning: gpu/cpu parity: the recipe has no inputs.samples: parity uses 4 built-in" in p.stderr
    m = json.loads((tmp_path / "o/gpu/cpu/manifest.json").read_text())
    assert "4 built-in sentences" in m["checks"]["parity"]["warnings"][0]
    assert s["targets"]["gpu/edge-gpu"] == {"status": "skipped", "reason": why,
                                            "manifest": str(tmp_path / "o/gpu/edge-gpu/manifest.json")}
    skipped = json.loads((tmp_path / "o/gpu/edge-gpu/manifest.json").read_text())
    assert skipped["status"] == "skipped" and skipped["hardware"] == {"accelerator": "orin",
                                                                      "device": "cuda"}
