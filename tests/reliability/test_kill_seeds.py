"""Kill -9 at random points of a real build (issue 8, the suite): of the orchestrator, and of one
of its workers. Seeded, so a failure replays. After each kill:

- no process of the build is left (workers die with their parent),
- nothing partial is visible under ``build/``: every target folder holds a manifest and exactly
  the files it lists, each with the digest it records (staging folders are hidden and swept),
- the next build reuses every task that had finished (its action entry was in the index) and
  succeeds, and ``cache verify`` finds nothing corrupt.

A real build of a tiny BERT: export, fusion, an OpenVINO conversion (a tree artifact), parity
and a short benchmark, two targets sharing their export.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import CLI, alive, children, popen_cli, run_cli

RECIPE = """\
name: kills
model:
  source: {model}
inputs:
  shapes: {{batch: [1], sequence: [16]}}
  samples: samples.txt
targets:
  ort:
    steps:
      - export-onnx: {{opset: 17}}
      - ort-optimize: {{}}
    checks:
      parity: {{}}
      benchmark: {{batch: [1], sequence: [16], threads: 1, warmup: 1, min_runs: 4, max_runs: 8,
                   window: 4, max_seconds: 1}}
  ov:
    steps:
      - export-onnx: {{opset: 17}}
      - openvino-convert: {{}}
    checks:
      parity: {{}}
"""
SAMPLES = "the quick brown fox jumps over the lazy dog\nhello world\na short one\n"
ORCHESTRATOR_SEEDS = [11, 12, 13, 14]
WORKER_SEEDS = [21, 22, 23]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("CI", "NNCF_CI")}


class Build:
    def __init__(self, root: Path, model: Path) -> None:
        self.root = root
        self.cache = root / "cache"
        self.out = root / "build"
        (root / "samples.txt").write_text(SAMPLES)
        self.recipe = root / "kills.yaml"
        self.recipe.write_text(RECIPE.format(model=model))
        self.args = [str(self.recipe), "--cache", str(self.cache), "--out", str(self.out)]

    def start(self) -> subprocess.Popen[str]:
        return popen_cli(*self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def finished_keys(self) -> set[str]:
        """Keys of the tasks whose action entries are in the index (the build is dead by now)."""
        from orchestrator.store.local import LocalStore

        if not (self.cache / "index").exists():
            return set()
        store = LocalStore(self.cache)
        try:
            return {str(k)[3:] for k in store.index if str(k).startswith("ac:")}
        finally:
            store.close()


def _watch(proc: subprocess.Popen[str], seconds: float) -> set[int]:
    """Every worker the build started while it ran for ``seconds`` (or until it ended)."""
    seen: set[int] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        seen.update(children(proc.pid))
        time.sleep(0.02)
    return seen


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_outputs_whole(build: Build) -> None:
    """Every visible target folder matches its manifest exactly: no partial or foreign file."""
    from orchestrator.store.local import LocalStore

    recipe_dir = build.out / "kills"
    if not recipe_dir.exists():
        return
    store = LocalStore(build.cache)
    try:
        for tdir in sorted(recipe_dir.iterdir()):
            if tdir.name.startswith("."):
                continue  # a staging folder of a killed build: hidden, swept by the next
            manifest = json.loads((tdir / "manifest.json").read_text())
            expected: dict[str, str] = {}
            for a in manifest["artifacts"]:
                if a["kind"] == "file":
                    expected[a["path"]] = a["digest"]
                else:
                    for rel, (digest, _) in store.tree_files(a["digest"]).items():
                        expected[f"{a['path']}/{rel}"] = digest
            present = {p.relative_to(tdir).as_posix() for p in tdir.rglob("*") if p.is_file()}
            assert present - {"manifest.json", "run-log.json"} == set(expected), tdir
            for rel, digest in expected.items():
                assert _digest(tdir / rel) == digest, f"{tdir / rel} does not match its manifest"
    finally:
        store.close()


def _assert_rerun_reuses(build: Build, finished: set[str]) -> None:
    p = subprocess.run([sys.executable, "-c", CLI, *build.args, "--json"], capture_output=True, text=True,
                       env=_env(), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    tasks = json.loads(p.stdout)["tasks"]
    hits = {t["key"] for t in tasks if t["status"] == "hit"}
    assert finished <= hits, f"rebuilt finished tasks: {sorted(finished - hits)}"
    _assert_outputs_whole(build)
    verify = run_cli("cache", "verify", "--cache", str(build.cache), timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _cold_seconds(build: Build) -> float:
    """How long a cold build of this recipe takes here (kills land anywhere inside it)."""
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", CLI, *build.args], capture_output=True, text=True,
                       env=_env(), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def cold_s(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> float:
    return _cold_seconds(Build(tmp_path_factory.mktemp("cold"), tiny_model_dir))


def _kill_run(build: Build, seed: int, cold_s: float, worker: bool) -> dict[str, Any]:
    rng = random.Random(seed)
    proc = build.start()
    # a worker is killed while one runs: before the last task starts
    delay = rng.uniform(0.1, 0.6 if worker else 0.9) * cold_s
    workers = _watch(proc, delay)
    killed = None
    if worker:
        # kill one of the build's live workers at a random point, the build goes on
        live = []
        while proc.poll() is None and not live:
            live = sorted(children(proc.pid))
            time.sleep(0.02)
        if live:
            killed = rng.choice(live)
            os.kill(killed, signal.SIGKILL)
        workers |= _watch(proc, 300)
        # the killed worker's task fails alone (exit 2), or it had just finished (exit 0)
        assert proc.wait(60) in (0, 2), proc.stderr.read() if proc.stderr else ""
    else:
        workers |= set(children(proc.pid))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    if proc.stderr:
        proc.stderr.close()
    deadline = time.monotonic() + 10
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(w) for w in workers), f"seed {seed}: workers outlived the build"
    return {"killed_worker": killed, "returncode": proc.returncode}


@pytest.mark.parametrize("seed", ORCHESTRATOR_SEEDS)
def test_kill_9_of_the_build_at_a_random_point(seed: int, cold_s: float, tiny_model_dir: Path,
                                               tmp_path: Path) -> None:
    build = Build(tmp_path, tiny_model_dir)
    _kill_run(build, seed, cold_s, worker=False)
    _assert_outputs_whole(build)
    _assert_rerun_reuses(build, build.finished_keys())


@pytest.mark.parametrize("seed", WORKER_SEEDS)
def test_kill_9_of_a_worker_at_a_random_point(seed: int, cold_s: float, tiny_model_dir: Path,
                                              tmp_path: Path) -> None:
    build = Build(tmp_path, tiny_model_dir)
    assert _kill_run(build, seed, cold_s, worker=True)["killed_worker"] is not None
    _assert_outputs_whole(build)
    _assert_rerun_reuses(build, build.finished_keys())
