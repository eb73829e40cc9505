"""Holding SIGINT and SIGTERM for a few lines that must not be cut in half (an atomic swap, a
cleanup, a temp file's creation and its registration for removal)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done (they are delivered right after).

    The handlers are swapped for one that only records the signal: a signal mask would hold it
    for this thread only, and the kernel hands a process-wide signal to any thread that has it
    unblocked (the Python handler then runs in the main thread all the same)."""
    held = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (and only it runs them)
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda n, _f: pending.append(n)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for n in dict.fromkeys(pending):
            signal.raise_signal(n)
