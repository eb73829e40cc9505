"""Item 1 (issue 8 #1, #11): workers die with the build; what a killed build left is swept, and
only that (a concurrent build's scratch is never touched)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import Project
from helpers import alive, children, cli_env, popen_cli, wait_for

SLOW = """\
name: slow
plugins: [fake_steps.py]
model:
  source: ./model
targets:
  a:
    steps:
      - fake-upper: {sleep: 30}
"""

QUICK = SLOW.replace("name: slow", "name: quick").replace("{sleep: 30}", "{suffix: '!'}")


def _start_slow(project: Project) -> tuple[subprocess.Popen[str], int]:
    r = project.recipe(SLOW, "slow.yaml")
    proc = popen_cli(str(r), "--cache", str(project.cache), "--out", str(project.out),
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = wait_for(lambda: children(proc.pid), 30)
    assert workers, "the build started no worker"
    # the worker is running its step once it holds its scratch folder's lock
    assert wait_for(lambda: list(project.cache.glob("tmp/fake-upper-*/spec.json")), 30)
    return proc, workers[0]


def test_kill_9_of_the_build_kills_its_worker_and_the_next_build_sweeps(project: Project,
                                                                          capsys) -> None:
    proc, worker = _start_slow(project)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert wait_for(lambda: not alive(worker), 5), "the worker outlived its build (orphaned)"
    left = sorted(p.name for p in (project.cache / "tmp").iterdir())
    assert any(n.startswith("fake-upper-") for n in left)
    capsys.readouterr()
    assert project.run(str(project.recipe(QUICK, "quick.yaml"))) == 0
    assert "stale temp folder" in capsys.readouterr().err
    assert list((project.cache / "tmp").iterdir()) == []


def test_a_concurrent_builds_scratch_is_never_swept(project: Project, capsys) -> None:
    proc, worker = _start_slow(project)
    try:
        scratch = list(project.cache.glob("tmp/fake-upper-*"))
        assert project.run(str(project.recipe(QUICK, "quick.yaml"))) == 0
        assert all(p.is_dir() for p in scratch) and alive(worker)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 143
    assert wait_for(lambda: not alive(worker), 5)


def test_a_killed_blob_writer_leaves_nothing_forever(tmp_path: Path) -> None:
    """A process killed while writing a blob leaves its temp file in a locked folder under tmp/:
    swept once its writer is gone, never while it lives."""
    from orchestrator.store.local import LocalStore

    cache = tmp_path / "cache"
    code = ("import os, sys, time; from orchestrator.store.local import LocalStore\n"
            f"s = LocalStore({str(cache)!r}); t = s._tmp_name(s.blob_path('ab' * 32))\n"
            "open(t, 'wb').write(b'x' * 100000); print(t, flush=True); time.sleep(60)")
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=cli_env())
    assert writer.stdout is not None
    tmp = Path(writer.stdout.readline().strip())
    store = LocalStore(cache)
    try:
        assert store.sweep() == (0, 0) and tmp.exists()  # its writer is alive
        writer.kill()
        writer.wait()
        removed, freed = store.sweep()
        assert removed == 1 and freed >= 100000 and not tmp.exists()
        assert list(store.tmp.iterdir()) == []
    finally:
        store.close()


CHILD_STEP = '''\
import contextlib
import os
import subprocess
import sys
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator.step import Step, StepContext


class P(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Spawns(Step):
    """Starts a long child (as a plugin calling a vendor compiler would), records its pid, waits."""

    name = "spawns"
    version = "1"
    Params = P
    outputs = {"model": "model.txt"}
    input_formats = {"model": ("any",)}
    output_formats = {"model": "text"}

    def run(self, ctx: StepContext) -> dict[str, Any]:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(os.environ["CHILD_PID_FILE"], "w") as f:
            f.write(str(child.pid))
        child.wait()
        return {}
'''


def _start_spawning(project: Project, pid_file: Path) -> tuple[subprocess.Popen[str], int, int]:
    (project.root / "spawns.py").write_text(CHILD_STEP)
    r = project.recipe("name: s\nplugins: [spawns.py]\nmodel:\n  source: ./model\ntargets:\n"
                       "  a:\n    steps:\n      - spawns: {}\n", "s.yaml")
    env = {**cli_env(), "CHILD_PID_FILE": str(pid_file)}
    proc = popen_cli(str(r), "--cache", str(project.cache), "--out", str(project.out), env=env,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30), "no child started"
    worker = children(proc.pid)[0]
    return proc, worker, int(pid_file.read_text())


def test_kill_9_of_the_build_kills_what_its_step_started(project: Project) -> None:
    """Issue 18, item 7: the worker died by its parent-death SIGKILL and the step's child lived
    on under PID 1. Now the parent-death signal is one the worker handles: it kills its group."""
    proc, worker, child = _start_spawning(project, project.root / "child.pid")
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert wait_for(lambda: not alive(worker), 10), "the worker outlived its build"
        assert wait_for(lambda: not alive(child), 10), "the step's child outlived the build"
    finally:
        for pid in (child, worker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_the_next_build_kills_what_a_dead_worker_left(project: Project, capsys) -> None:
    """The backstop: build and worker both killed with -9 at once (no handler can run); the next
    command's sweep of the dead build's scratch kills the leftover of the worker's group."""
    proc, worker, child = _start_spawning(project, project.root / "child.pid")
    try:
        os.kill(worker, signal.SIGKILL)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert wait_for(lambda: not alive(worker), 10)
        assert alive(child)  # orphaned, as a kill -9 of everything would leave it
        capsys.readouterr()
        assert project.run(str(project.recipe(QUICK, "quick.yaml"))) == 0
        assert wait_for(lambda: not alive(child), 10), "the sweep left the orphan running"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
