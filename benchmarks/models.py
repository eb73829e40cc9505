"""Real-model figures for recipes/bert-edge.yaml: accuracy, speed-ups, rebuild times.

Run:  .venv/bin/python benchmarks/models.py        (writes benchmarks/results/models.json)

1. builds bert-edge from an empty cache (all four targets; each benchmark measures PyTorch in
   its own task, alternated with the engine);
2. reads each target's manifest: parity and latency vs PyTorch eager measured in the same build;
3. times a no-op rebuild (median of 10 runs of the CLI, after one warm-up run);
4. changes only the int8 quantization params and times the rebuild, recording which tasks ran
   (the same change side by side with Olive, in one run: benchmarks/olive_compare.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.steps.benchmark import cpu_model

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "deploy-build"
QUANT_BEFORE = "ort-quantize: {mode: dynamic, weight_type: int8, per_channel: true}"
QUANT_AFTER = "ort-quantize: {mode: dynamic, weight_type: int8, per_channel: true, op_types: [MatMul]}"


def build(recipe: Path, cache: Path, out: Path, *extra: str) -> tuple[float, dict[str, Any]]:
    cmd = [str(BIN), str(recipe), "--cache", str(cache), "--out", str(out), "--json", *extra]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-6000:])
        raise SystemExit(f"build failed ({p.returncode}): {' '.join(cmd)}")
    return elapsed, json.loads(p.stdout)


def target_figures(out: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for manifest in sorted(out.glob("bert-edge/*/manifest.json")):
        m = json.loads(manifest.read_text())
        parity = m["checks"].get("parity", {})
        bench = m.get("benchmark", {})
        figures[m["target"]] = {
            "status": m["status"],
            "size_bytes": sum(a["size"] for a in m["artifacts"]),
            "parity": {k: parity.get(k) for k in ("mean_cosine", "min_cosine", "max_abs_diff",
                                                   "precision", "passed")},
            "benchmark": {k: bench.get(k) for k in ("results", "speedup", "noisy", "noise",
                                                    "threads", "runtime", "reference_runtime")
                          if k in bench},
        }
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "models.json"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        shutil.copytree(ROOT / "recipes", tmp / "recipes")
        recipe = tmp / "recipes" / "bert-edge.yaml"
        cache, out = tmp / "cache", tmp / "build"
        cold_s, cold = build(recipe, cache, out)
        figures = target_figures(out)
        noop = []
        subprocess.run([str(BIN), str(recipe), "--cache", str(cache), "--out", str(out)],
                       check=True, capture_output=True)  # warm the page cache once
        for _ in range(10):
            t0 = time.perf_counter()
            subprocess.run([str(BIN), str(recipe), "--cache", str(cache), "--out", str(out)],
                           check=True, capture_output=True)
            noop.append(time.perf_counter() - t0)
        text = recipe.read_text()
        assert QUANT_BEFORE in text, "benchmarks/models.py: update QUANT_BEFORE to match the recipe"
        recipe.write_text(text.replace(QUANT_BEFORE, QUANT_AFTER))
        change_s, change = build(recipe, cache, out)
        ran = sorted(t["label"] for t in change["tasks"] if t["status"] == "run")
        after = target_figures(out)["cpu-int8"]
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "cpu": cpu_model()},
        "cold_build_s": round(cold_s, 1),
        "cold_build_tasks": len(cold["tasks"]),
        "targets": figures,
        "noop_build_s": round(statistics.median(noop), 3),
        "quantization_change": {
            "change": f"{QUANT_BEFORE} -> {QUANT_AFTER}",
            "rebuild_s": round(change_s, 2),
            "tasks_run": ran,
            "olive": "measured side by side in benchmarks/results/olive_compare.json",
            "cpu-int8_after": after,
        },
    }
    text = json.dumps(results, indent=2, sort_keys=True) + "\n"
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
