"""The remote cache: planning a big nightly against S3 with an empty local cache, and a cold
second machine fetching a recipe's targets instead of building them.

Run:  .venv/bin/python benchmarks/remote_cache.py [--recipes 200] [--targets 5] [--skip-model]
      [--model bert-edge|tiny]      (writes benchmarks/results/remote_cache.json)

The S3 API is moto's server (`moto_server`, a separate process bound to 127.0.0.1 on a free port),
so every lookup is a real HTTP request through s3fs. Two measures:

1. nightly: recipes x targets of the fake steps (tests/fixtures; 16 tasks per recipe, as in
   engine.py); the remote is filled as if last night built everything (entries and blobs of every
   task, pushed with `cache push`); then a machine with an EMPTY local cache plans it
   (`deploy-build ... --dry-run --remote-cache s3://...`): every task must be a HIT. Timed in a
   fresh process, start-up included, three times (each with a new empty cache). Goal < 10 s.
2. second machine: machine one builds the model recipe with the remote (uploading), machine two,
   with an empty local cache, runs the same build and takes every task from the remote (only the
   targets' artifacts are downloaded). Goal: under 10% of the build time. A build without any
   remote is timed too, to show what uploading costs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from engine import fill_cache, project  # noqa: E402

CLI = [sys.executable, "-m", "orchestrator"]
ROUNDS = 5
S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
          "AWS_DEFAULT_REGION": "us-east-1"}

TINY = """\
name: tiny
model:
  source: @MODEL@
inputs:
  shapes: {batch: [1], sequence: [16]}
  samples: samples.txt
targets:
  ort-fp32:
    steps: [{export-onnx: {opset: 17}}, {ort-optimize: {}}]
    checks: {parity: {}}
  ort-int8:
    steps: [{export-onnx: {opset: 17}}, {ort-optimize: {}}, {ort-quantize: {mode: dynamic}}]
    checks: {parity: {}}
  openvino-int8:
    steps: [{export-onnx: {opset: 17}}, {openvino-convert: {}}, {nncf-quantize: {}}]
    checks: {parity: {mean_cosine: 0.98, min_cosine: 0.95}}
"""


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
                break
            time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)


def bucket(endpoint: str, name: str) -> str:
    import fsspec

    fs = fsspec.filesystem("s3", endpoint_url=endpoint, skip_instance_cache=True)
    fs.mkdir(name)
    return f"s3://{name}/nightly"


def nightly_recipes(p: Path, recipes: int, targets: int) -> list[str]:
    paths = []
    for i in range(recipes):
        lines = [f"name: r{i}", "plugins: [fake_steps.py]", "model:", "  source: ./model", "targets:"]
        for t in range(targets):
            lines += [f"  t{t}:", "    steps:",
                      f"      - fake-upper: {{suffix: 'r{i}'}}",
                      f"      - fake-tree: {{files: {t + 1}}}",
                      f"      - fake-upper: {{suffix: 't{t}'}}",
                      "    checks: {fake-length: {max_bytes: 100000000}}"]
        path = p / f"r{i}.yaml"
        path.write_text("\n".join(lines) + "\n")
        paths.append(str(path))
    return paths


def bench_nightly(tmp: Path, env: dict[str, str], url: str, recipes: int, targets: int) -> dict:
    p = project(tmp / "nightly")
    paths = nightly_recipes(p, recipes, targets)
    writer = p / "writer-cache"
    args = argparse.Namespace(recipes=paths, targets=None, cache=str(writer), out=None, only=None,
                              remote_cache="none", remote_cache_mode=None)
    t0 = time.perf_counter()
    fill_cache(args)
    filled = time.perf_counter() - t0
    t0 = time.perf_counter()
    push = subprocess.run([*CLI, "cache", "push", "--cache", str(writer), "--remote-cache", url],
                          capture_output=True, text=True, env=env)
    pushed = time.perf_counter() - t0
    assert push.returncode == 0, push.stderr
    runs, local_runs = [], []
    for i in range(ROUNDS):  # alternated: load from other processes hits both alike
        cache = p / f"empty-cache-{i}"
        t0 = time.perf_counter()
        out = subprocess.run([*CLI, *paths, "--dry-run", "--cache", str(cache),
                              "--remote-cache", url], capture_output=True, text=True, env=env)
        runs.append(time.perf_counter() - t0)
        assert out.returncode == 0, out.stderr[-2000:]
        head = out.stdout.splitlines()[0]
        assert " 0 RUN" in head, head
        t0 = time.perf_counter()  # the same plan from a local cache that holds everything
        subprocess.run([*CLI, *paths, "--dry-run", "--cache", str(writer), "--remote-cache", "none"],
                       capture_output=True, check=True, env=env)
        local_runs.append(time.perf_counter() - t0)
    local = p / "empty-cache-0"
    return {"recipes": recipes, "targets_per_recipe": targets, "plan": head,
            "fill_local_s": round(filled, 1), "push_s": round(pushed, 1),
            "push": push.stderr.strip().splitlines()[-1],
            "plan_empty_local_cache_s": [round(x, 2) for x in runs],
            "plan_empty_local_cache_median_s": round(statistics.median(runs), 2),
            "plan_all_local_hits_s": [round(x, 2) for x in local_runs],
            "plan_all_local_hits_median_s": round(statistics.median(local_runs), 2),
            "remote_minus_local_per_round_s": [round(a - b, 2) for a, b in zip(runs, local_runs,
                                                                               strict=True)],
            "goal_s": 10,
            "local_cache_after_plan_bytes": sum(f.stat().st_size for f in local.rglob("*")
                                                if f.is_file())}


def model_recipe(tmp: Path, model: str) -> tuple[str, list[str]]:
    """(recipe text, its extra files) for the second-machine measure."""
    if model == "bert-edge":
        return (ROOT / "recipes" / "bert-edge.yaml").read_text(), ["data"]
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_tiny_model

    folder = make_tiny_model(tmp / "tiny-model")
    return TINY.replace("@MODEL@", str(folder)), []


def machine(tmp: Path, name: str, text: str, extras: list[str], model: str) -> Path:
    folder = tmp / name
    folder.mkdir()
    (folder / "samples.txt").write_text("the quick brown fox\nhello world\na short one\n"
                                        "how fast does this model run on cpu\n")
    for e in extras:
        shutil.copytree(ROOT / "recipes" / e, folder / e)
    recipe = folder / f"{model}.yaml"
    recipe.write_text(text)
    return recipe


def build(recipe: Path, env: dict[str, str], remote: str) -> dict:
    folder = recipe.parent
    t0 = time.perf_counter()
    p = subprocess.run([*CLI, str(recipe), "--cache", str(folder / "cache"), "--out",
                        str(folder / "out"), "--json", "--remote-cache", remote],
                       capture_output=True, text=True, env=env)
    took = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    tasks = json.loads(p.stdout)["tasks"]
    fetched = [x for x in p.stderr.splitlines() if x.startswith("remote: fetched")]
    return {"s": round(took, 2), "tasks": len(tasks),
            "statuses": sorted({t["status"] for t in tasks}), "fetch_lines": fetched}


def bench_second_machine(tmp: Path, env: dict[str, str], url: str, model: str) -> dict:
    text, extras = model_recipe(tmp, model)
    alone = build(machine(tmp, "alone", text, extras, model), env, "none")
    one = build(machine(tmp, "one", text, extras, model), env, url)
    two = build(machine(tmp, "two", text, extras, model), env, url)
    manifests = [sorted((tmp / m / "out").rglob("manifest.json")) for m in ("one", "two")]
    same = all(a.read_bytes() == b.read_bytes() for a, b in zip(*manifests, strict=True))
    return {"model": model, "build_without_remote": alone, "build_uploading": one,
            "second_machine_fetching": two, "manifests_identical": same,
            "fetch_over_build": round(two["s"] / alone["s"], 3), "goal": 0.10}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", type=int, default=200)
    ap.add_argument("--targets", type=int, default=5)
    ap.add_argument("--model", choices=("tiny", "bert-edge"), default="tiny")
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--skip-nightly", action="store_true")
    a = ap.parse_args()
    env = {**os.environ, **S3_ENV, "CI": "true", "NNCF_CI": "1"}
    env.pop("DEPLOY_BUILD_REMOTE_CACHE", None)
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "load_before": os.getloadavg()[0]}}
    tmp = Path(tempfile.mkdtemp(prefix="remote-bench-"))
    try:
        with moto_server() as endpoint:
            env["AWS_ENDPOINT_URL"] = endpoint
            os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
            if not a.skip_nightly:
                results["nightly"] = bench_nightly(tmp, env, bucket(endpoint, "nightly"),
                                                   a.recipes, a.targets)
                print(json.dumps(results["nightly"], indent=2), file=sys.stderr)
            if not a.skip_model:
                results["second_machine"] = bench_second_machine(tmp, env, bucket(endpoint, "models"),
                                                                 a.model)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["machine"]["load_after"] = os.getloadavg()[0]
    out = ROOT / "benchmarks" / "results" / "remote_cache.json"
    if out.exists():  # a section not measured this time keeps its last result
        kept = json.loads(out.read_text())
        results = {**{k: v for k, v in kept.items() if k not in results}, **results}
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(json.dumps(results, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
