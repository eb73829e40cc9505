"""Engine speed: CLI start-up, no-op builds, planning a big nightly, source hashing.

Run:  .venv/bin/python benchmarks/engine.py [--quick]     (writes benchmarks/results/engine.json)

Everything is measured in one run on this machine with wall-clock timers; no model libraries are
involved (the fake steps from tests/fixtures stand in for real ones).
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

ROOT = Path(__file__).resolve().parents[1]
FAKE_STEPS = ROOT / "tests" / "fixtures" / "fake_steps.py"
CLI = [sys.executable, "-m", "orchestrator"]
BIN = Path(sys.executable).parent / "deploy-build"

THREE_TARGETS = """\
name: three
plugins: [fake_steps.py]
model:
  source: ./model
targets:
  t1:
    steps: [{fake-upper: {suffix: "1"}}, {fake-tree: {files: 3}}]
    checks: {fake-length: {max_bytes: 100000000}}
  t2:
    steps: [{fake-upper: {suffix: "1"}}, {fake-const: {text: two}}]
  t3:
    steps: [{fake-upper: {suffix: "3"}}, {fake-tree: {files: 2}}, {fake-upper: {}}]
"""


def wall(cmd: list[str], runs: int, env: dict[str, str] | None = None) -> dict[str, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4), "runs": runs}


def project(tmp: Path) -> Path:
    (tmp / "model").mkdir(parents=True)
    (tmp / "model" / "weights.bin").write_bytes(os.urandom(1 << 20))
    (tmp / "model" / "config.json").write_text("{}")
    shutil.copy(FAKE_STEPS, tmp / "fake_steps.py")
    return tmp


def bench_help(runs: int) -> dict[str, float]:
    return wall([str(BIN), "--help"], runs)


def bench_noop(tmp: Path, runs: int) -> dict[str, float]:
    p = project(tmp / "noop")
    r = p / "three.yaml"
    r.write_text(THREE_TARGETS)
    cmd = [str(BIN), str(r), "--cache", str(p / "cache"), "--out", str(p / "build")]
    subprocess.run(cmd, check=True, capture_output=True)
    return wall(cmd, runs)


def bench_nightly_plan(tmp: Path, recipes: int, targets: int) -> dict[str, float]:
    """Plan (load, validate, compile, key, look up) recipes x targets of fake steps, in process."""
    from orchestrator.session import open_session

    p = project(tmp / "nightly")
    paths = []
    for i in range(recipes):
        lines = [f"name: r{i}", "plugins: [fake_steps.py]", "model:", "  source: ./model", "targets:"]
        for t in range(targets):
            lines += [f"  t{t}:", "    steps:",
                      f"      - fake-upper: {{suffix: 'r{i}'}}",  # shared by the recipe's targets
                      f"      - fake-tree: {{files: {t + 1}}}",
                      f"      - fake-upper: {{suffix: 't{t}'}}",
                      "    checks: {fake-length: {max_bytes: 100000000}}"]
        path = p / f"r{i}.yaml"
        path.write_text("\n".join(lines) + "\n")
        paths.append(str(path))
    args = argparse.Namespace(recipes=paths, targets=None, cache=str(p / "cache"), out=None, only=None)
    t0 = time.perf_counter()
    session = open_session(args)
    cold = time.perf_counter() - t0
    n = len(session.plan.decisions)
    session.store.close()
    fill_cache(args)  # the nightly after a night where everything was built: every task a HIT
    t0 = time.perf_counter()
    session = open_session(args)
    warm = time.perf_counter() - t0
    counts = session.plan.counts()
    session.store.close()
    return {"recipes": recipes, "targets_per_recipe": targets, "tasks": n,
            "plan_empty_cache_s": round(cold, 3), "plan_s": round(warm, 3), "warm_counts": counts}


def fill_cache(args: argparse.Namespace) -> None:
    """Record an action entry for every task, as a real build would (without running steps)."""
    from orchestrator.session import open_session

    while True:
        s = open_session(args)
        todo = [(tid, d) for tid, d in s.plan.decisions.items() if d.status == "RUN" and d.key]
        for tid, d in todo:
            task = s.graph.task(tid)
            outputs = {}
            for name, filename in task.info.cls.outputs.items():
                blob = s.store.put_bytes(f"{d.key}:{name}".encode())
                outputs[name] = {**blob.to_json(), "filename": filename.rstrip("/")}
            s.store.put_action(d.key, {"outputs": outputs, "metrics": {"bytes": 1}, "warnings": [],
                                       "log": "", "doc": d.doc})
        s.store.close()
        if not todo:
            return


def bench_hash(tmp: Path, size_mb: int) -> dict[str, float]:
    from orchestrator.plan.sources import StatCache
    from orchestrator.store.local import LocalStore

    f = tmp / "big" / "model.safetensors"
    f.parent.mkdir(parents=True)
    chunk = os.urandom(1 << 20)
    with open(f, "wb") as out:
        for _ in range(size_mb):
            out.write(chunk)
    store = LocalStore(tmp / "hashcache")
    stats = StatCache(store.index)
    t0 = time.perf_counter()
    stats.blob(f.parent)
    first = time.perf_counter() - t0
    rechecks = []
    for _ in range(20):
        t0 = time.perf_counter()
        stats.blob(f.parent)
        rechecks.append(time.perf_counter() - t0)
    store.close()
    return {"size_mb": size_mb, "first_hash_s": round(first, 3),
            "first_hash_mb_per_s": round(size_mb / first, 1),
            "recheck_ms": round(statistics.median(rechecks) * 1000, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs and a 100 MB file")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engine.json"))
    a = ap.parse_args()
    runs = 5 if a.quick else 15
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "help": bench_help(runs),
            "noop_build_3_targets": bench_noop(tmp, runs),
            "nightly_plan": bench_nightly_plan(tmp, 200, 5),
            "hash_model_file": bench_hash(tmp, 100 if a.quick else 1024),
        }
    goals = {
        "help_under_0.3s": results["help"]["median_s"] < 0.3,
        "noop_under_0.3s": results["noop_build_3_targets"]["median_s"] < 0.3,
        "nightly_plan_under_2s": results["nightly_plan"]["plan_s"] < 2.0,
        "recheck_under_10ms": results["hash_model_file"]["recheck_ms"] < 10,
    }
    results["goals_met"] = goals
    text = json.dumps(results, indent=2, sort_keys=True) + "\n"
    print(text)
    if not a.quick:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
