"""Facts about this machine that a measurement depends on (never a host name): the one home
for them, read by the task key (a step's ``machine_keys``) and by the benchmark's metrics."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from functools import cache
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> str:
    return str(os.cpu_count())


FACTS: dict[str, Callable[[], str]] = {"cpu_model": cpu_model, "cpu_count": cpu_count}


@cache
def fact(name: str) -> str:
    """One fact by the name a step lists in ``machine_keys``."""
    if name not in FACTS:
        raise KeyError(f"unknown machine fact {name!r}; known: {', '.join(sorted(FACTS))}")
    return FACTS[name]()
