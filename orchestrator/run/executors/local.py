"""Local executor: every task in its own worker process, at most `jobs` cpu tokens at once.

A process per task (not a shared pool) is what isolates a native crash or os._exit to that task:
the worker dies, its task fails, everything else goes on. The process is forked from a warm
worker server that has imported what the step imports, when one is ready (executors/warm.py),
else started cold (`python -m orchestrator.run.worker SPEC`); either way it is the task's alone.
Workers run in their own session (so cancelling kills a task's whole process group) and die
with this process: each asks for a parent-death signal (worker.py), so `kill -9` of the build
leaves no worker running (a warm server dies with the build, and its children with it).

Per-step limits are enforced from here, not inside the worker: past its ``timeout_s`` or its
``max_memory_mb`` a task's whole session gets SIGKILL and the task fails with the reason. Memory is
the resident set of every process of the worker's session (less what a forked worker shares with
its warm server, which counted at the fork), read from /proc every
``LIMIT_POLL_S`` (an address-space rlimit would break torch and ONNX Runtime, which reserve far
more address space than they touch).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.run.executors import cuda_device_ids
from orchestrator.run.executors import warm as warm_workers
from orchestrator.run.executors.base import LOG_TAIL_LINES, Finished, Job  # noqa: F401 - re-exported

# no telemetry or phone-home from OpenVINO, NNCF or the hub during a build (set for every worker,
# and in this process before it imports one of them itself)
NO_TELEMETRY = {"CI": "true", "NNCF_CI": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1",
                "OPENVINO_NO_TELEMETRY": "1"}
LIMIT_POLL_S = 0.1


@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen[bytes] | warm_workers.ForkedProcess
    started: float
    log_path: Path
    cpu: int  # the job's cpu, clamped to the executor's tokens
    devices: list[int] = field(default_factory=list)  # CUDA devices given to the task
    reason: str | None = None  # set when a limit killed it
    baseline_mb: float = 0.0  # memory shared with the warm server it was forked from


def total_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not on Linux
        return float("inf")


@dataclass
class LocalExecutor:
    """Runs jobs within `jobs` cpu tokens, the machine's memory and its CUDA devices. A job that
    asks for more than the machine has still runs, alone; so does an exclusive job (a benchmark),
    whatever it asks for."""

    jobs: int
    running: dict[str, _Running] = field(default_factory=dict)
    memory_gb: float = field(default_factory=total_memory_gb)
    devices: list[int] = field(default_factory=cuda_device_ids)
    warm: bool = True  # fork workers from a warm server when one is ready (executors/warm.py)
    forked: int = 0  # tasks started from a warm server (the others started cold)
    _checked: float = 0.0
    _pool: warm_workers.WarmPool | None = None

    @property
    def free_cpu(self) -> int:
        return self.jobs - sum(r.cpu for r in self.running.values())

    def can_start(self, cpu: int, memory_gb: float = 0.0, cuda: int = 0,
                  exclusive: bool = False) -> bool:
        if not self.running:
            return True
        jobs = [r.job for r in self.running.values()]
        if exclusive or any(j.exclusive for j in jobs):
            return False
        return (min(cpu, self.jobs) <= self.free_cpu
                and sum(j.memory_gb for j in jobs) + memory_gb <= self.memory_gb
                and sum(j.cuda for j in jobs) + cuda <= len(self.devices))

    def start(self, job: Job) -> None:
        job.scratch.mkdir(parents=True, exist_ok=True)
        spec_path = job.scratch / "spec.json"
        spec_path.write_text(json.dumps(job.spec.to_json(), indent=1))
        log_path = job.scratch / "log.txt"
        env = _worker_env(job.spec.threads)
        devices: list[int] = []
        if job.cuda:
            busy = {d for r in self.running.values() for d in r.devices}
            devices = [d for d in self.devices if d not in busy][:job.cuda]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
        log_path.write_bytes(b"")
        proc: subprocess.Popen[bytes] | warm_workers.ForkedProcess | None = None
        if self.warm and warm_workers.enabled():
            if self._pool is None:
                self._pool = warm_workers.WarmPool(_worker_env())
            proc = self._pool.fork(spec_path, job.scratch, log_path, env)
            self.forked += proc is not None
            self._pool.want(job.preload)  # for the next task of this step, if not this one
        if proc is None:
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "orchestrator.run.worker", str(spec_path)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=env, start_new_session=True, cwd=str(job.scratch),
                )
        from orchestrator.host.procs import record_worker

        record_worker(job.scratch, proc.pid)  # the next sweep kills what a dead build left of it
        self.running[job.task_id] = _Running(
            job, proc, time.monotonic(), log_path, min(job.cpu, self.jobs), devices,
            baseline_mb=getattr(proc, "baseline_mb", 0.0))

    def warm_up(self, preload: tuple[str, ...] = (), timeout: float = 60.0) -> bool:
        """Start a warm server with these modules and wait until it is ready (True) or cannot
        serve (False); tasks started meanwhile start cold as always."""
        if not (self.warm and warm_workers.enabled()):
            return False
        if self._pool is None:
            self._pool = warm_workers.WarmPool(_worker_env())
        self._pool.want(preload)
        deadline = time.monotonic() + timeout
        server = self._pool.servers[-1] if self._pool.servers else None
        while server is not None and time.monotonic() < deadline:
            if server.usable():
                return True
            if server.failed is not None:
                return False
            time.sleep(0.05)
        return False

    def elapsed(self, task_id: str) -> float:
        return time.monotonic() - self.running[task_id].started

    def poll(self, timeout: float = 0.05) -> list[Finished]:
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() - self._checked >= LIMIT_POLL_S:
                self._checked = time.monotonic()
                self.enforce_limits()
            done = [tid for tid, r in self.running.items() if r.proc.poll() is not None]
            if done or time.monotonic() >= deadline or not self.running:
                break
            time.sleep(0.01)
        out = []
        for tid in done:
            r = self.running.pop(tid)
            rc = r.proc.returncode if r.proc.returncode is not None else -signal.SIGKILL
            log = r.log_path.read_text(errors="replace")
            result_path = Path(r.job.spec.result)
            result = json.loads(result_path.read_text()) if rc == 0 and result_path.exists() else None
            ok = result is not None and r.reason is None
            out.append(Finished(tid, ok, result if ok else None, log, rc,
                                time.monotonic() - r.started, r.reason))
        if done and self._pool is not None:
            self._pool.tidy()
        return out

    def enforce_limits(self) -> None:
        """Kill (SIGKILL to its session) each running task past its timeout or memory limit."""
        now = time.monotonic()
        live = [r for r in self.running.values() if r.reason is None and r.proc.poll() is None]
        watched = {r.proc.pid for r in live if r.job.max_memory_mb is not None}
        rss = session_rss_mb(watched) if watched else {}
        for r in live:
            used = rss.get(r.proc.pid, 0.0) - r.baseline_mb
            job, where = r.job, r.job.limit_where
            if job.timeout_s is not None and now - r.started > job.timeout_s:
                r.reason = (f"timed out after {now - r.started:.1f} s; timeout_s {job.timeout_s:g} "
                            f"{where.get('timeout_s', 'set by the caller')}")
            elif job.max_memory_mb is not None and used > job.max_memory_mb:
                r.reason = (f"used {used:.0f} MB, over its limit of "
                            f"{job.max_memory_mb:g} MB; max_memory_mb "
                            f"{where.get('max_memory_mb', 'set by the caller')}")
            else:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.proc.pid, signal.SIGKILL)

    def cancel_all(self) -> None:
        """Stop every running worker (its whole process group) and wait for it."""
        for r in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for r in self.running.values():
            try:
                r.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.proc.pid, signal.SIGKILL)
                r.proc.wait()
        self.running.clear()
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _worker_env(threads: int = 1) -> dict[str, str]:
    """The environment of a task's worker (a warm server's too, with one thread)."""
    env = dict(os.environ)
    env.update(NO_TELEMETRY)
    env.update({
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
        # sources are resolved (and downloaded, for hub ids) while planning: a step
        # reads local folders only and never reaches the network
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        # the worker dies with this process (a parent-death signal, see worker.py)
        "DEPLOY_BUILD_PARENT_PID": str(os.getpid()),
    })
    return env


def session_rss_mb(sessions: set[int]) -> dict[int, float]:
    """Resident memory (MB) of every process of each session id, summed (one pass over /proc).
    A worker leads its own session, so its session id is its pid and its children are counted."""
    totals = dict.fromkeys(sessions, 0.0)
    page = os.sysconf("SC_PAGE_SIZE")
    try:
        pids = [n for n in os.listdir("/proc") if n.isdigit()]
    except OSError:  # pragma: no cover - no /proc
        return totals
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            sid = int(fields[3])  # after the command: state ppid pgrp session ...
            if sid in totals:
                totals[sid] += int(fields[21]) * page / 2**20  # field 24: rss in pages
        except (OSError, ValueError, IndexError):  # gone meanwhile, or not ours to read
            continue
    return totals


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"worker killed by {name}"
    return f"worker exited with code {returncode}"
