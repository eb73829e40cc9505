"""Item 1 (issue 8 #1, #11): workers die with the build; what a killed build left is swept, and
only that (a concurrent build's scratch is never touched)."""

from __future__ import annotations

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
