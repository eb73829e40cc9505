"""This CPU's facts that a measurement records and its key holds: model name, ISA features,
core count. Read from /proc/cpuinfo (or the copy $DEPLOY_BUILD_CPUINFO names), standard library
only: a benchmark's key covers this module, not the GPU and LiteRT probes of host/machine.py."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, flags of the first processor) from /proc/cpuinfo (x86 ``flags``, Arm
    ``Features``)."""
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name == "model name" and not model:
            model = value.strip()
        elif name in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def cpuinfo_path() -> str:
    """/proc/cpuinfo, or the file $DEPLOY_BUILD_CPUINFO names: a copy of another machine's, to
    see how a recipe's machine-conditioned gates are judged there (its figures are still this
    machine's)."""
    return os.environ.get("DEPLOY_BUILD_CPUINFO") or "/proc/cpuinfo"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo), else what the platform says."""
    try:
        for line in Path(cpuinfo_path()).read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> list[str]:
    """The ISA features that decide engine speed (orchestrator.host.conditions.ISA_FEATURES) that
    this CPU has: what a benchmark records beside its figures, and what gate conditions name."""
    from orchestrator.host.conditions import isa_features

    return isa_features(parse_cpuinfo(_read(cpuinfo_path()))[1])


def cpu_count() -> str:
    return str(os.cpu_count())
