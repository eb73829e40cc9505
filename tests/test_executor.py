"""Resource accounting of the local executor."""

from __future__ import annotations

import subprocess
from pathlib import Path

from orchestrator.executors.local import Job, LocalExecutor, _Running


def running(ex: LocalExecutor, cpu: int, memory_gb: float = 0, cuda: int = 0) -> None:
    job = Job(f"t{len(ex.running)}", {}, Path("/tmp"), cpu, "", memory_gb, cuda)
    proc = subprocess.Popen(["true"])
    proc.wait()
    ex.running[job.task_id] = _Running(job, proc, 0.0, Path("/dev/null"))


def test_cpu_memory_and_cuda_tokens() -> None:
    ex = LocalExecutor(jobs=4, memory_gb=8, devices=[0])
    assert ex.can_start(64)  # more than the machine: runs, alone
    running(ex, 2, memory_gb=6, cuda=1)
    assert ex.can_start(2, memory_gb=2)
    assert not ex.can_start(3)  # cpu
    assert not ex.can_start(1, memory_gb=3)  # memory
    assert not ex.can_start(1, cuda=1)  # the one GPU is taken
