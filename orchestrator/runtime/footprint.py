"""What opening and running an engine costs: load time and the resident memory it adds.

The runtime's modules are imported first (an import is not a load), the process's peak resident
set (VmHWM) is reset (``/proc/self/clear_refs``, Linux 4.0+), the engine is opened and run once on
each feed; ``peak_mb`` is the peak resident set over that time minus the resident set before the
load: what the engine adds to a process that already holds its runtime. Where the peak cannot be
reset (no /proc, not permitted) the peak is the process's whole-life peak and ``peak_reset`` is
False.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable
from typing import Any

MB = 2**20
RUNTIME_MODULES = {"onnxruntime": ("onnxruntime",), "openvino": ("openvino",),
                   "torchscript": ("torch",), "pytorch": ("torch", "transformers")}


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb * 1024 / MB


def reset_peak() -> bool:
    """Reset this process's peak resident set to its current one; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_mb() -> float | None:
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024 / MB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # Linux: KiB


def measure_open(kind: str, open_engine: Callable[[], Any],
                 feeds: Iterable[dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
    """Open an engine of runtime ``kind`` and run it once per feed; the engine and its
    footprint: ``load_ms``, ``first_run_ms`` (the first feed), ``peak_mb``, ``peak_reset``."""
    for module in RUNTIME_MODULES.get(kind, ()):
        importlib.import_module(module)
    before = rss_mb()
    reset = reset_peak()
    start = time.perf_counter()
    engine = open_engine()
    loaded = time.perf_counter()
    first: float | None = None
    for feed in feeds:
        t = time.perf_counter()
        engine.run(feed)
        first = (time.perf_counter() - t) * 1000 if first is None else first
    peak = peak_mb()
    added = None if peak is None or before is None else max(0.0, peak - before)
    return engine, {"load_ms": round((loaded - start) * 1000, 2),
                    "first_run_ms": None if first is None else round(first, 2),
                    "peak_mb": None if added is None else round(added, 1),
                    "peak_reset": reset}
