"""Who holds a lock or a lease, in one wording for every wait: a process on this machine (from
/proc/locks and the record it keeps) or a build elsewhere (a remote cache's lease)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass


def this_command() -> str:
    """How this process was started, shortened for a message (``deploy-build recipes/x.yaml``)."""
    argv = list(sys.argv) or ["?"]
    if argv[0].endswith(("cli.py", "__main__.py", "deploy-build")) or argv[0] == "-c":
        argv[0] = "deploy-build"
    text = " ".join(argv)
    return text if len(text) <= 120 else text[:117] + "..."


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: a process (on this machine, or ``host`` for a remote lease), what it
    said about itself when it took the lock, and since when (seconds since the epoch)."""

    pid: int | None
    command: str = ""
    tasks: tuple[str, ...] = ()
    since: float | None = None
    mode: str = ""  # "exclusive" | "shared" | ""
    host: str = ""

    def describe(self, now: float | None = None) -> str:
        """``pid 1234 (deploy-build recipes/x.yaml; running a/check:benchmark) since 02:31:05,
        4 min ago``: one wording for every lock and lease a build may wait for."""
        who = f"pid {self.pid}" if self.pid is not None else "an unknown process"
        if self.host:
            who += f" on {self.host}"
        about = [x for x in (self.command, self._doing()) if x]
        text = who + (f" ({'; '.join(about)})" if about else "")
        if self.since is not None:
            now = time.time() if now is None else now
            text += (f" since {time.strftime('%H:%M:%S', time.localtime(self.since))}, "
                     f"{_ago(max(0.0, now - self.since))}")
        return text

    def _doing(self) -> str:
        if not self.tasks:
            return ""
        verb = "benchmarking" if self.mode == "exclusive" else "running"
        more = f" and {len(self.tasks) - 2} more" if len(self.tasks) > 2 else ""
        return f"{verb} {', '.join(self.tasks[:2])}{more}"


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
