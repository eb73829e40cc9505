"""End to end on the real packaged MiniLM: recipes/bert-edge.yaml from an empty cache, then a no-op."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "bert-edge.yaml"


@pytest.mark.slow
def test_bert_edge_from_empty_cache_then_noop(tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "build"
    cmd = [sys.executable, "-m", "orchestrator", str(RECIPE), "--cache", str(cache), "--out", str(out),
           "--json"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stderr[-4000:]
    summary = json.loads(first.stdout)
    tasks = {t["label"]: t for t in summary["tasks"]}
    # the GPU target's checks and engine build are skipped here; its export and fp16 are built
    skipped = sorted(t["label"] for t in summary["tasks"] if t["status"] == "skip")
    from orchestrator.edge import litert_env
    from orchestrator.host.machine import detect

    expected = [] if detect().gpus else [
        "gpu-fp16/3:tensorrt-build", "gpu-fp16/check:benchmark", "gpu-fp16/check:parity",
        "gpu-fp16/check:parity:reference"]
    if litert_env.problem("litert-convert"):  # no LiteRT environment: the edge target skips
        expected += ["edge-int8/1:litert-convert", "edge-int8/2:litert-quantize",
                     "edge-int8/check:benchmark", "edge-int8/check:parity"]
    assert skipped == sorted(expected)
    if not detect().gpus:
        assert summary["targets"]["bert-edge/gpu-fp16"]["status"] == "skipped"
        assert tasks["gpu-fp16/2:ort-quantize"]["status"] == "run"
    assert {t["status"] for t in summary["tasks"]} - {"skip"} == {"run"}
    # one export for every target
    assert sum(1 for t in summary["tasks"] if t["step"] == "export-onnx") == 1
    targets = ("cpu-fp32", "cpu-int8", "openvino-fp32", "openvino-int8")
    for target in targets:
        m = json.loads((out / "bert-edge" / target / "manifest.json").read_text())
        assert m["status"] == "ok", m.get("failures")
        assert m["checks"]["parity"]["passed"] is True
        for a in m["artifacts"]:
            assert (out / "bert-edge" / target / a["path"]).exists()
    int8 = json.loads((out / "bert-edge/cpu-int8/manifest.json").read_text())
    assert int8["checks"]["parity"]["mean_cosine"] >= 0.99
    fused = next(s for s in int8["steps"] if s["step"] == "ort-optimize")["metrics"]
    assert fused["fused"]["Attention"] == 6
    assert tasks["cpu-int8/3:ort-quantize"]["status"] == "run"
    ov8 = json.loads((out / "bert-edge/openvino-int8/manifest.json").read_text())
    assert ov8["checks"]["parity"]["mean_cosine"] >= 0.99 and ov8["checks"]["parity"]["min_cosine"] >= 0.97
    assert ov8["benchmark"]["runtime"]["precision_hint"] == "f32"
    manifests = {t: (out / "bert-edge" / t / "manifest.json").read_bytes() for t in targets}

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-4000:]
    assert {t["status"] for t in json.loads(second.stdout)["tasks"]} - {"skip"} == {"hit"}
    for target in targets:  # a no-op leaves the reviewed manifests byte-identical
        assert (out / "bert-edge" / target / "manifest.json").read_bytes() == manifests[target]
