"""bert-edge's edge-int8 target (LiteRT dynamic int8, XNNPACK, 2 threads) against PyTorch, paired
in one benchmark task; goal (issue 11): >= 4x at b1 s128 with mean cosine >= 0.99 on the recipe's
sentences. Needs the LiteRT environment (`make litert-env`). Writes results/edge_int8.json.

    .venv/bin/python benchmarks/edge.py [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=None, help="a cache to reuse (default: a fresh one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        cache = args.cache or str(Path(tmp) / "cache")
        out = Path(tmp) / "build"
        cmd = [sys.executable, "-m", "orchestrator", str(ROOT / "recipes/bert-edge.yaml"),
               "-t", "edge-int8", "--rebench", "--cache", cache, "--out", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        m = json.loads((out / "bert-edge/edge-int8/manifest.json").read_text())
    point = m["benchmark"]["results"]["b1_s128"]
    parity = m["checks"]["parity"]
    result = {
        "goal": {"speedup_b1_s128": 4.0, "mean_cosine": 0.99},
        "met": point["speedup"] >= 4.0 and parity["mean_cosine"] >= 0.99,
        "speedup": point["speedup"], "speedup_interval": point["speedup_interval"],
        "median_ms": point["median_ms"], "pytorch_median_ms": point["reference"]["median_ms"],
        "noisy": point["noisy"], "noise": point.get("noise", []),
        "parity": {k: parity[k] for k in ("mean_cosine", "min_cosine", "samples", "precision")},
        "size_bytes": {s["step"]: s["outputs"]["model"]["size"] for s in m["steps"]},
        "runtime": m["benchmark"]["runtime"], "cpu": m["benchmark"]["cpu"],
        "cpu_count": m["benchmark"]["cpu_count"],
    }
    path = ROOT / "benchmarks/results/edge_int8.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
