"""The benchmark phase of a cold bert-edge build: today's tree against the method before it.

Run:  .venv/bin/python benchmarks/bench_phase.py [--base REV] [--rounds N] [--keep DIR]
      (writes benchmarks/results/bench_phase.json)

Issue 17 asks the benchmark phase of a cold `recipes/bert-edge.yaml` build to take at most half
of what it took before (each target's benchmark timed alone, each against its own PyTorch
reference), with speed-ups that agree with that method within their intervals.

Each side (the base revision, checked out into a temporary git worktree, and this tree) builds
its own recipes/bert-edge.yaml once into its own cache (kept under ``--keep``), then every round
runs each side's `--rebench` build, alternating which goes first: only the benchmark tasks run
(every other task is a hit), so the wall time of that command is the benchmark phase plus a
second of start-up. Both sides run with the same Python and libraries (PYTHONPATH points at each
tree). Per round and side the script records the wall time, each benchmark task's duration, and
each target's speed-ups with their 95% intervals from the manifests; agreement is judged per
grid point on overlapping intervals.
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

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASE = "89c80f5"  # main on 2026-12-07, before issue 17: one benchmark task at a time


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def prepare(tree: Path, keep: Path) -> dict[str, Any]:
    """A side: its tree, a kept cache with the whole recipe built once, the rebench command."""
    sha = _git("rev-parse", "--short", "HEAD") if tree == ROOT else tree.name
    folder = keep / sha
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    build = [sys.executable, "-m", "orchestrator", str(tree / "recipes" / "bert-edge.yaml"),
             "--cache", str(folder / "cache"), "--out", str(folder / "build"), "--json"]
    t0 = time.perf_counter()
    subprocess.run(build, env=env, cwd=folder, capture_output=True)  # cold the first time
    print(f"{sha}: built (or found) its cache in {time.perf_counter() - t0:.0f} s", flush=True)
    return {"sha": sha, "env": env, "cwd": folder, "cmd": [*build, "--rebench"],
            "build": folder / "build" / "bert-edge"}


def figures(build: Path) -> dict[str, Any]:
    """Per target and grid point: speed-up, interval, noisy; from the manifests just written."""
    out: dict[str, Any] = {}
    for manifest in sorted(build.glob("*/manifest.json")):
        bench = json.loads(manifest.read_text()).get("benchmark") or {}
        for point, r in sorted((bench.get("results") or {}).items()):
            out[f"{manifest.parent.name}/{point}"] = {
                "speedup": r.get("speedup"), "interval": r.get("speedup_interval"),
                "noisy": r.get("noisy"), "runs": r.get("runs"),
                "reference_runs": (r.get("reference") or {}).get("runs")}
    return out


def once(side: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    done = subprocess.run(side["cmd"], env=side["env"], cwd=side["cwd"], capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    tasks = json.loads(done.stdout)["tasks"] if done.stdout.strip() else []
    bench = {t["label"]: t["duration_s"] for t in tasks
             if t["label"].endswith("check:benchmark") and t["status"] == "run"}
    return {"wall_s": round(wall, 2), "exit": done.returncode, "benchmark_tasks_s": bench,
            "figures": figures(side["build"])}


def agreement(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Per point: do the two methods' intervals overlap?"""
    out = {}
    for key in sorted(set(base) & set(new)):
        a, b = base[key].get("interval"), new[key].get("interval")
        ok = bool(a and b and a[0] <= b[1] and b[0] <= a[1])
        out[key] = {"base": [base[key]["speedup"], a], "new": [new[key]["speedup"], b],
                    "agree": ok}
    return out


def _machine() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from orchestrator.host.machine import cpu_features, cpu_model

    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "cpu_features": cpu_features(),
            "python": platform.python_version(), "loadavg_1m_at_start": os.getloadavg()[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default=DEFAULT_BASE)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", type=Path, default=Path(tempfile.gettempdir()) / "bench-phase")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bench_phase.json")
    args = ap.parse_args()
    base_sha = _git("rev-parse", "--short", args.base)
    wt = Path(tempfile.mkdtemp(prefix="bench-phase-")) / base_sha
    _git("worktree", "add", "--detach", str(wt), base_sha)
    try:
        sides = {"base": prepare(wt, args.keep), "new": prepare(ROOT, args.keep)}
        runs: dict[str, list[dict[str, Any]]] = {"base": [], "new": []}
        for i in range(args.rounds):
            for name in (("base", "new") if i % 2 == 0 else ("new", "base")):
                runs[name].append(once(sides[name]))
                print(f"round {i + 1} {name}: {runs[name][-1]['wall_s']} s", flush=True)
    finally:
        _git("worktree", "remove", "--force", str(wt))
        shutil.rmtree(wt.parent, ignore_errors=True)
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
    paired = [n["wall_s"] / b["wall_s"] for b, n in zip(runs["base"], runs["new"], strict=True)]
    agree = [agreement(b["figures"], n["figures"]) for b, n in zip(runs["base"], runs["new"],
                                                                      strict=True)]
    result = {
        "what": "wall time of `deploy-build recipes/bert-edge.yaml --rebench` (only the 5 "
                "benchmark tasks run) per side, rounds alternating which side goes first",
        "machine": _machine(), "base": sides["base"]["sha"], "new": sides["new"]["sha"],
        "rounds": runs, "median_wall_s": med, "ratio_of_medians": round(med["new"] / med["base"], 3),
        "median_paired_ratio": round(statistics.median(paired), 3), "goal": "<= 0.5",
        "agreement_per_round": agree,
        "points_agreeing": f"{sum(p['agree'] for a in agree for p in a.values())} of "
                           f"{sum(len(a) for a in agree)}",
    }
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: result[k] for k in ("median_wall_s", "ratio_of_medians",
                                              "median_paired_ratio", "points_agreeing")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
