"""Warm workers (orchestrator/run/executors/warm.py): tasks forked from a server that imported what
their steps import. The executor contract tests run on it too (the `warm` executor there); these
cover what only it has: memory limits that leave out what the server shares, a server that would
fork with threads (refused: tasks start cold), and a killed build taking its server and the
server's children with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.run.executors import warm
from orchestrator.run.executors.local import LocalExecutor

sys.path.insert(0, str(Path(__file__).parent))
from test_executor_contract import job, wait  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _module(tmp_path: Path, name: str, body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module the server can import, on the workers' PYTHONPATH."""
    lib = tmp_path / "lib"
    lib.mkdir(exist_ok=True)
    (lib / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(lib), str(ROOT)]))


def test_a_memory_limit_counts_what_the_task_adds_not_the_preloaded_libraries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the server holds 300 MB (as torch and transformers hold about 400): a child shares them
    _module(tmp_path, "big_library",
            "HELD = bytearray(300 * 2**20)\nHELD[::4096] = b'x' * len(HELD[::4096])\n", monkeypatch)
    ex = LocalExecutor(jobs=2)
    try:
        assert ex.warm_up(("big_library",))
        assert ex._pool is not None and ex._pool.servers[-1].rss_mb > 300
        ex.start(job(tmp_path, "Fail", {"how": "memory", "mb": 60, "seconds": 0.5}, name="small",
                     max_memory_mb=200))
        ex.start(job(tmp_path, "Fail", {"how": "memory", "mb": 400, "seconds": 30}, name="big",
                     max_memory_mb=200, limit_where={"max_memory_mb": "set at r.yaml:9:5"}))
        got = {f.task_id: f for f in wait(ex, 2)}
        assert ex.forked == 2
        # 60 MB of its own passes a 200 MB limit, although its resident set is over 360 MB
        # (the step then fails on purpose: it writes no output)
        assert got["small"].reason is None and "held 60 MB" in got["small"].log, got["small"]
        big = got["big"]
        assert not big.ok and big.reason and "over its limit of 200 MB" in big.reason
        used = int(big.reason.split("used ")[1].split(" MB")[0])
        assert 195 <= used < 330, big.reason  # what it added, not the server's 300 MB besides
    finally:
        ex.cancel_all()


def test_a_server_whose_imports_start_a_thread_never_forks_and_tasks_start_cold(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _module(tmp_path, "threaded_library",
            "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n",
            monkeypatch)
    ex = LocalExecutor(jobs=2)
    try:
        assert not ex.warm_up(("threaded_library",))
        assert ex._pool is not None and "started a thread" in str(ex._pool.servers[-1].failed)
        ex.start(job(tmp_path, "Upper", {"suffix": "!"}))
        (fin,) = wait(ex)
        assert fin.ok, fin.log
        assert ex.forked == 0
        ex._pool.want(("json",))
        assert ex._pool.broken and ex._pool.servers == []  # and no new server for this build
    finally:
        ex.cancel_all()


def test_a_killed_server_fails_its_running_task_and_the_next_one_starts_cold(
        tmp_path: Path) -> None:
    ex = LocalExecutor(jobs=2)
    try:
        assert ex.warm_up(("json",))
        ex.start(job(tmp_path, "Fail", {"how": "hang", "seconds": 60}, name="hung"))
        assert ex.forked == 1
        assert ex._pool is not None
        os.kill(ex._pool.servers[-1].proc.pid, signal.SIGKILL)
        (fin,) = wait(ex, timeout=30)
        assert fin.task_id == "hung" and not fin.ok and fin.returncode == -signal.SIGKILL
        ex.start(job(tmp_path, "Upper", {"suffix": "!"}, name="next"))
        (fin,) = wait(ex)
        assert fin.ok, fin.log
        assert ex.forked == 1  # started cold: the pool is broken, no new server
    finally:
        ex.cancel_all()


def test_the_modules_that_start_threads_are_never_preloaded() -> None:
    assert warm.preloadable(["onnxruntime.quantization", "onnx", "openvino", "torch", "onnx"]) \
        == ("onnx", "torch")


BUILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from orchestrator.run.executors.local import LocalExecutor
from test_executor_contract import job
ex = LocalExecutor(jobs=2)
assert ex.warm_up(("json",))
ex.start(job(Path({tmp!r}), "Fail", {{"how": "hang", "seconds": 120}}))
server = ex._pool.servers[-1].proc.pid
child = ex.running["t"].proc.pid
print(server, child, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_kill_9_of_the_build_ends_its_warm_server_and_the_tasks_forked_from_it(
        tmp_path: Path) -> None:
    code = BUILD.format(tests=str(Path(__file__).parent), tmp=str(tmp_path))
    build = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    try:
        assert build.stdout is not None
        server, child = map(int, build.stdout.readline().split())
        assert _alive(server) and _alive(child)
        os.kill(build.pid, signal.SIGKILL)
        build.wait()
        deadline = time.monotonic() + 10
        while (_alive(server) or _alive(child)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(server), "the warm server outlived the build"
        assert not _alive(child), "a task forked from the warm server outlived the build"
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(build.pid, signal.SIGKILL)
