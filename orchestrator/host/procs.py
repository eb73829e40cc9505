"""The processes a task's worker starts must not outlive the build.

A worker runs in its own session (its pid is its process group's id), and processes a step
starts (a plugin's ``subprocess.Popen``, the LiteRT jobs) join that group. Two guards:

- The worker asks the kernel for SIGHUP when its parent (the build) dies (`PR_SET_PDEATHSIG`),
  and its handler kills the worker's whole group with SIGKILL before exiting (`on_parent_death`):
  a SIGKILL as the death signal would end the worker alone and leave its children under PID 1.
- The executor records the worker's pid in its scratch folder (`WORKER_PID`); the next command's
  sweep of a dead build's scratch kills what is left of that group (`kill_leftovers`): processes
  whose process group is that pid and which started after the file was written (a recycled pid's
  group is somebody else's and older).

A step whose child starts a session of its own leaves the group: that child is its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

WORKER_PID = "worker.pid"


def record_worker(scratch: Path, pid: int) -> None:
    with contextlib.suppress(OSError):
        (scratch / WORKER_PID).write_text(f"{pid}\n")


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def group_members(pgid: int, since: float) -> list[int]:
    """Live processes of process group ``pgid`` that started at or after ``since`` (epoch s)."""
    boot, found = _boot_time(), []
    try:
        hz = float(os.sysconf("SC_CLK_TCK"))
        entries = os.listdir("/proc")
    except (OSError, ValueError, AttributeError):
        return []
    for name in entries:
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after the name: state ppid pgrp ...; starttime is the 22nd field (index 19 here)
        if len(fields) < 20 or fields[0] in ("Z", "X") or int(fields[2]) != pgid:
            continue
        started = None if boot is None else boot + int(fields[19]) / hz
        if started is None or started >= since - 1.0:
            found.append(int(name))
    return found


def kill_leftovers(scratch: Path) -> int:
    """Kill what is left of the process group of a dead worker that ran in ``scratch``; how many
    processes were killed."""
    record = scratch / WORKER_PID
    try:
        pgid = int(record.read_text().strip())
        since = record.stat().st_mtime
    except (OSError, ValueError):
        return 0
    members = group_members(pgid, since)
    for pid in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(members)


def on_parent_death(signum: int, frame: Any) -> None:
    """The worker's SIGHUP handler (its parent-death signal): kill its whole process group (the
    processes its step started), itself last."""
    me = os.getpid()
    if os.getpgrp() == me:
        for pid in group_members(me, 0.0):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(me, signal.SIGKILL)
    time.sleep(0)  # pragma: no cover - killed above when a group leader
    os._exit(128 + signum)


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
