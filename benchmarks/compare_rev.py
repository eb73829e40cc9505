"""`deploy-build --help` and a no-op build, timed alternately against another git revision.

Run:  .venv/bin/python benchmarks/compare_rev.py [--base REV] [--runs N]
      (writes benchmarks/results/compare_rev.json)

The base revision is checked out into a temporary git worktree and run from there with the same
Python and the same installed libraries (`python -m orchestrator` with PYTHONPATH pointing at the
checkout), so the only difference is the project's own code. Each round runs the base and the
current tree back to back, in alternating order, so load that comes and goes on a shared machine
hits both alike; the result is the ratio of the medians and the median of the per-round ratios.
Each side builds the three-target recipe of engine.py with its own revision's fake steps
(tests/fixtures/fake_steps.py) into its own cache once, then every timed run is a no-op.

With ``--recipe recipes/bert-edge.yaml`` each side builds that recipe of its own tree instead (real
steps: minutes of CPU per side, since a step's code is in its key and the two revisions' keys
differ), into ``--keep DIR/<revision>/``, which later runs reuse, so each side is built once.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine import THREE_TARGETS  # noqa: E402

# The last commit before the work of issue 7 ("today's main" when that issue was filed).
DEFAULT_BASE = "a1b295f"


def recipe_side(keep: Path, sha: str, tree: Path, recipe: str) -> dict[str, object]:
    """A side that no-op builds `recipe` of its own tree, into a cache kept under keep/<sha>."""
    p = keep / sha
    p.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": ""}
    cli = [sys.executable, "-m", "orchestrator"]
    build = [*cli, str(tree / recipe), "--cache", str(p / "cache"), "--out", str(p / "build"),
             "--jobs", "2"]
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "orchestrator")],
                   check=True, capture_output=True)
    # fills the cache: minutes with real steps the first time, a no-op when kept from before
    subprocess.run(build, check=True, capture_output=True, env=env, cwd=p)
    return {"help": [*cli, "--help"], "noop": build, "env": env, "cwd": p}


def side(tmp: Path, name: str, tree: Path) -> dict[str, object]:
    p = tmp / name
    (p / "model").mkdir(parents=True)
    (p / "model" / "weights.bin").write_bytes(b"\1" * (1 << 20))
    (p / "model" / "config.json").write_text("{}")
    shutil.copy(tree / "tests" / "fixtures" / "fake_steps.py", p / "fake_steps.py")
    (p / "three.yaml").write_text(THREE_TARGETS)
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": ""}
    cli = [sys.executable, "-m", "orchestrator"]
    build = [*cli, str(p / "three.yaml"), "--cache", str(p / "cache"), "--out", str(p / "build")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "orchestrator")],
                   check=True, capture_output=True)
    subprocess.run(build, check=True, capture_output=True, env=env, cwd=p)  # cold: fills the cache
    return {"help": [*cli, "--help"], "noop": build, "env": env, "cwd": p}


def once(s: dict[str, object], what: str) -> float:
    cmd = s[what]
    assert isinstance(cmd, list)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, env=s["env"], cwd=s["cwd"])  # type: ignore[arg-type]
    t = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{what} failed ({r.returncode}):\n{r.stderr.decode()[-2000:]}")
    if what == "noop" and b"RUN   " in r.stdout + r.stderr:  # progress lines go to stderr
        raise SystemExit(f"the timed build was not a no-op:\n{r.stderr.decode()[-2000:]}")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default=DEFAULT_BASE, help="git revision to compare with")
    ap.add_argument("--runs", type=int, default=21, help="rounds per measure")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compare_rev.json"))
    ap.add_argument("--recipe", default=None,
                    help="no-op build this recipe of each tree (e.g. recipes/bert-edge.yaml) "
                         "instead of the fake three-target one")
    ap.add_argument("--keep", default=str(Path(tempfile.gettempdir()) / "deploy-build-compare"),
                    help="with --recipe: where each revision's built cache is kept and reused")
    ap.add_argument("--goal", type=float, default=1.10,
                    help="the no-op's ratio (current / base) that must not be exceeded")
    a = ap.parse_args()
    base_sha = subprocess.run(["git", "rev-parse", a.base], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
    head_sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "orchestrator"], cwd=ROOT,
                                check=True, capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryDirectory(prefix="deploy-build-compare-") as t:
        tmp = Path(t)
        wt = tmp / "base-tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(wt), base_sha], cwd=ROOT,
                       check=True)
        try:
            if a.recipe:
                keep = Path(a.keep)
                sides = {"base": recipe_side(keep, base_sha, wt, a.recipe),
                         "current": recipe_side(keep, head_sha, ROOT, a.recipe)}
            else:
                sides = {"base": side(tmp, "base", wt), "current": side(tmp, "current", ROOT)}
            results: dict[str, object] = {}
            for what in ("help", "noop"):
                for s in sides.values():  # one warm-up each: page cache, bytecode
                    once(s, what)
                times: dict[str, list[float]] = {"base": [], "current": []}
                for i in range(a.runs):
                    order = ["base", "current"] if i % 2 == 0 else ["current", "base"]
                    for name in order:
                        times[name].append(once(sides[name], what))
                med = {k: statistics.median(v) for k, v in times.items()}
                goal = a.goal if what == "noop" else 1.10
                ratios = [c / b for b, c in zip(times["base"], times["current"], strict=True)]
                results[what] = {
                    "base_median_s": round(med["base"], 4),
                    "current_median_s": round(med["current"], 4),
                    "base_min_s": round(min(times["base"]), 4),
                    "current_min_s": round(min(times["current"]), 4),
                    "ratio_of_medians": round(med["current"] / med["base"], 3),
                    "median_of_paired_ratios": round(statistics.median(ratios), 3),
                    "rounds": a.runs,
                    "goal": f"ratio <= {goal:g}",
                    "goal_met": med["current"] / med["base"] <= goal,
                }
                print(what, json.dumps(results[what]))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT,
                           capture_output=True)
    out = {"base": base_sha, "current": head_sha, "recipe": a.recipe or "three (fake steps)",
           "current_has_uncommitted_changes": dirty,
           "python": platform.python_version(), "cpus": os.cpu_count(),
           "load_avg_at_end": round(os.getloadavg()[0], 2), **results}
    Path(a.out).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
