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
import threading
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


TASKS = 7  # export, fusion, OpenVINO conversion, parity x2 (+ its reference), benchmark


class Progress:
    """Reads the build's progress lines (stderr) as they come, and every worker it starts."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.events = 0  # "RUN" and "done" lines so far: a point in the build that load can't move
        self.workers: set[int] = set()
        self.tail: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.tail = (self.tail + [line])[-40:]
            if line.startswith(("RUN ", "done ")):
                self.events += 1

    def until(self, cond: Any, timeout: float = 300) -> bool:
        deadline = time.monotonic() + timeout
        while not cond() and self.proc.poll() is None and time.monotonic() < deadline:
            self.workers.update(children(self.proc.pid))
            time.sleep(0.01)
        self.workers.update(children(self.proc.pid))
        return bool(cond())


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
            for a in [*manifest["artifacts"], *manifest.get("bundle", {}).get("files", [])]:
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


def _kill_run(build: Build, seed: int, worker: bool) -> int | None:
    """Start the build and kill it (or one of its workers) at a seeded point: after the n-th
    task start or finish, plus a random fraction of a second. Returns the killed worker's pid."""
    rng = random.Random(seed)
    proc = build.start()
    progress = Progress(proc)
    # the build anywhere before its last task ends; a worker while later tasks remain
    events = range(1, 2 * TASKS - 2) if worker else range(1, 2 * TASKS)
    nth, extra = rng.choice(events), rng.uniform(0.0, 0.3 if worker else 0.6)
    assert progress.until(lambda: progress.events >= nth), "".join(progress.tail)
    progress.until(lambda: False, timeout=extra)
    killed = None
    if worker:
        live: list[int] = []
        progress.until(lambda: bool(live.extend(children(proc.pid)) or live))
        assert live, f"seed {seed}: no worker ran after event {nth}"
        killed = rng.choice(sorted(live))
        os.kill(killed, signal.SIGKILL)
        progress.until(lambda: False)
        # the killed worker's task fails alone (exit 2), or it had just finished (exit 0)
        assert proc.wait(60) in (0, 2), "".join(progress.tail)
    else:
        assert proc.poll() is None, f"seed {seed}: the build ended before event {nth} + {extra:.2f}s"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    deadline = time.monotonic() + 10
    while any(alive(w) for w in progress.workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(w) for w in progress.workers), f"seed {seed}: workers outlived the build"
    return killed


@pytest.mark.parametrize("seed", ORCHESTRATOR_SEEDS)
def test_kill_9_of_the_build_at_a_random_point(seed: int, tiny_model_dir: Path,
                                               tmp_path: Path) -> None:
    build = Build(tmp_path, tiny_model_dir)
    _kill_run(build, seed, worker=False)
    _assert_outputs_whole(build)
    _assert_rerun_reuses(build, build.finished_keys())


@pytest.mark.parametrize("seed", WORKER_SEEDS)
def test_kill_9_of_a_worker_at_a_random_point(seed: int, tiny_model_dir: Path,
                                              tmp_path: Path) -> None:
    build = Build(tmp_path, tiny_model_dir)
    assert _kill_run(build, seed, worker=True) is not None
    _assert_outputs_whole(build)
    _assert_rerun_reuses(build, build.finished_keys())
