"""Helpers of the reliability suite: processes, subprocess builds, the store of a project."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CLI = "import sys; from orchestrator.cli import main; sys.exit(main())"


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(REPO)) if p)
    return env


def run_cli(*args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    """deploy-build in a subprocess (for what could hang or must be killed)."""
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True,
                          timeout=timeout, env=cli_env(), **kw)


STARTED: list[subprocess.Popen[str]] = []  # killed (with their workers) after each test


def popen_cli(*args: str, **kw: Any) -> subprocess.Popen[str]:
    kw.setdefault("env", cli_env())
    proc = subprocess.Popen([sys.executable, "-c", CLI, *args], text=True, **kw)
    STARTED.append(proc)
    return proc


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process below it (its workers and what they started)."""
    import signal

    for child in children(pid):
        kill_tree(child)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def kill_started() -> None:
    """Kill what popen_cli started and is still running: no build outlives its test."""
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            kill_tree(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
                proc.communicate(timeout=10)


def communicate(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    """proc.communicate, but a process past its timeout is killed (with its workers) first."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.communicate(timeout=10)
        raise


def alive(pid: int) -> bool:
    """True while pid runs (a zombie nobody reaped yet counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(d.name))
    return out


def wait_for(cond: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def action_key(summary: dict[str, Any], label: str) -> str:
    key = summary["by_label"][label]["key"]
    assert isinstance(key, str)
    return key
