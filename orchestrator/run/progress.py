"""Reporters turn build events into output: a live view on a terminal, plain lines otherwise.

The executor and build loop never print; they call these methods. Progress goes to stderr, so
stdout carries only what a machine should read (the --json summary).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO

STATUS_WORD = {"hit": "HIT", "run": "done", "skip": "SKIP", "fail": "FAIL"}


class Reporter(Protocol):
    def task_start(self, task: Any, reasons: list[str]) -> None: ...
    def task_wait(self, task: Any, why: str) -> None: ...
    def task_done(self, task: Any, outcome: Any) -> None: ...
    def tick(self, executor: Any) -> None: ...
    def close(self) -> None: ...


class PlainReporter:
    """One line per event; good for CI logs and pipes."""

    def __init__(self, stream: TextIO | None = None, show_hits: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.show_hits = show_hits

    def task_start(self, task: Any, reasons: list[str]) -> None:
        why = f"  ({'; '.join(reasons)})" if reasons else ""
        self._line(f"RUN   {task.label}{why}")

    def task_wait(self, task: Any, why: str) -> None:
        self._line(f"WAIT  {task.label}  ({why})")

    def task_done(self, task: Any, outcome: Any) -> None:
        if outcome.status == "hit" and not self.show_hits:
            return
        word = STATUS_WORD[outcome.status]
        extra = ""
        if outcome.status == "run":
            extra = f"  {outcome.duration:.1f}s"
        elif outcome.status == "skip" or (outcome.status == "hit" and outcome.reasons):
            extra = f"  ({'; '.join(outcome.reasons)})"
        elif outcome.status == "fail":
            extra = f"  {outcome.duration:.1f}s"
        self._line(f"{word:<5} {task.label}{extra}")

    def tick(self, executor: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class LiveReporter(PlainReporter):
    """On a terminal: finished tasks scroll above a footer of running tasks with elapsed time."""

    def __init__(self, stream: TextIO | None = None, total: int = 0) -> None:
        super().__init__(stream)
        self.footer = 0
        self.total = total
        self.done = 0
        self.last = 0.0

    def task_start(self, task: Any, reasons: list[str]) -> None:
        self._clear()
        super().task_start(task, reasons)

    def task_wait(self, task: Any, why: str) -> None:
        self._clear()
        super().task_wait(task, why)

    def task_done(self, task: Any, outcome: Any) -> None:
        self._clear()
        self.done += 1
        super().task_done(task, outcome)

    def tick(self, executor: Any) -> None:
        now = time.monotonic()
        if now - self.last < 0.1:
            return
        self.last = now
        self._clear()
        running = sorted((r.job.label, tid) for tid, r in executor.running.items())
        lines = [f"  running  {label:<40} {executor.elapsed(tid):6.1f}s" for label, tid in running]
        queued = self.total - self.done - len(running)
        lines.append(f"  [{self.done}/{self.total} done, {len(running)} running, {queued} queued]")
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self.footer = len(lines)

    def close(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self.footer:
            self.stream.write(f"\x1b[{self.footer}A\x1b[J")
            self.footer = 0
