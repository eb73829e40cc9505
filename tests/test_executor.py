"""Resource accounting and limits of the local executor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from orchestrator.run.executors.local import Job, LocalExecutor, _Running, session_rss_mb


def running(ex: LocalExecutor, cpu: int, memory_gb: float = 0, cuda: int = 0) -> None:
    job = Job(f"t{len(ex.running)}", {}, Path("/tmp"), cpu, "", memory_gb, cuda)
    proc = subprocess.Popen(["true"])
    proc.wait()
    ex.running[job.task_id] = _Running(job, proc, 0.0, Path("/dev/null"), min(cpu, ex.jobs))


def test_cpu_memory_and_cuda_tokens() -> None:
    ex = LocalExecutor(jobs=4, memory_gb=8, devices=[0])
    assert ex.can_start(64)  # more than the machine: runs, alone
    running(ex, 2, memory_gb=6, cuda=1)
    assert ex.can_start(2, memory_gb=2)
    assert not ex.can_start(3)  # cpu
    assert not ex.can_start(1, memory_gb=3)  # memory
    assert not ex.can_start(1, cuda=1)  # the one GPU is taken



def test_session_memory_counts_the_workers_children() -> None:
    """max_memory_mb is the resident memory of the worker's whole session: a child that
    allocates counts (the session leader here is a shell that holds nothing)."""
    child = (f"{sys.executable} -c \"x = b'1' * (150 * 2**20); print('ready', flush=True); "
             "import time; time.sleep(30)\"")
    proc = subprocess.Popen(["sh", "-c", f"{child}; true"], start_new_session=True,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        rss = session_rss_mb({proc.pid, 999_999_999})
        assert 150 < rss[proc.pid] < 400, rss
        assert rss[999_999_999] == 0.0
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
