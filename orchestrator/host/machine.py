"""What this machine has: CPU model and ISA flags, memory, NVIDIA GPUs. Read cheaply, once per run.

CPU facts come from /proc/cpuinfo and /proc/meminfo; GPUs from the driver's device nodes
(/dev/nvidia0, ...) and, where those exist, ``nvidia-smi``. Nothing here imports torch or a CUDA
library (importing torch alone costs 1.5 s). The parsers are pure functions of the text they read.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

from orchestrator.host.cpu import (  # noqa: F401 - the CPU facts, here with the others
    _read,
    cpu_count,
    cpu_features,
    cpu_model,
    cpuinfo_path,
    parse_cpuinfo,
)

_NVIDIA_NODE = re.compile(r"nvidia(\d+)$")
_CUDA_VERSION = re.compile(r"CUDA Version:\s*([0-9.]+)")
SMI_QUERY = "index,name,compute_cap,memory.total,driver_version"
SMI_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    compute_capability: str  # "8.6", as the driver reports it
    memory_gb: float

    def describe(self) -> str:
        return f"{self.index}: {self.name} (compute capability {self.compute_capability}, " \
               f"{self.memory_gb:.1f} GB)"


@dataclass(frozen=True)
class Machine:
    cpu_model: str
    cpu_count: int
    cpu_flags: frozenset[str]
    memory_gb: float
    device_nodes: tuple[int, ...] = ()  # /dev/nvidiaN found
    gpus: tuple[Gpu, ...] = ()  # as nvidia-smi lists them
    driver: str | None = None
    cuda_version: str | None = None  # the highest CUDA version the driver supports
    gpu_problem: str | None = None  # why device nodes exist but no GPU could be listed

    def as_json(self) -> dict[str, Any]:
        return {
            "cpu": {"model": self.cpu_model, "count": self.cpu_count,
                    "flags": sorted(self.cpu_flags)},
            "memory_gb": round(self.memory_gb, 1),
            "cuda": {"gpus": [{"index": g.index, "name": g.name,
                               "compute_capability": g.compute_capability,
                               "memory_gb": round(g.memory_gb, 1)} for g in self.gpus],
                     "driver": self.driver, "cuda_version": self.cuda_version,
                     "device_nodes": list(self.device_nodes), "problem": self.gpu_problem},
        }


def parse_meminfo(text: str) -> float:
    """MemTotal in GB (10^9 bytes) from /proc/meminfo; 0.0 when absent."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            return int(parts[1]) * 1024 / 1e9
    return 0.0


def parse_smi(csv: str) -> tuple[tuple[Gpu, ...], str | None]:
    """GPUs and the driver version from ``nvidia-smi --query-gpu=SMI_QUERY --format=csv,noheader,
    nounits`` (memory in MiB)."""
    gpus, driver = [], None
    for line in csv.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 5 or not cells[0].isdigit():
            continue
        try:
            memory = float(cells[3]) * 2**20 / 1e9
        except ValueError:
            memory = 0.0
        gpus.append(Gpu(int(cells[0]), cells[1], cells[2], memory))
        driver = driver or cells[4]
    return tuple(gpus), driver


def parse_cuda_version(text: str) -> str | None:
    """The "CUDA Version: 12.4" of plain ``nvidia-smi`` output."""
    m = _CUDA_VERSION.search(text)
    return m.group(1) if m else None


def device_nodes(dev: Path = Path("/dev")) -> tuple[int, ...]:
    try:
        names = os.listdir(dev)
    except OSError:
        return ()
    return tuple(sorted(int(m.group(1)) for n in names if (m := _NVIDIA_NODE.match(n))))


def _smi(*args: str) -> tuple[str | None, str | None]:
    """(stdout, None) of nvidia-smi, or (None, why it gave nothing)."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, "nvidia-smi is not on PATH"
    try:
        done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=SMI_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"nvidia-smi did not answer: {e}"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        return None, f"nvidia-smi exited {done.returncode}: {tail[0]}"
    return done.stdout, None


@dataclass
class _Cuda:
    gpus: tuple[Gpu, ...] = ()
    driver: str | None = None
    cuda_version: str | None = None
    problem: str | None = None
    nodes: tuple[int, ...] = field(default_factory=tuple)


def _detect_cuda() -> _Cuda:
    nodes = device_nodes()
    if not nodes:
        return _Cuda()
    out, problem = _smi(f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits")
    if out is None:
        return _Cuda(problem=problem, nodes=nodes)
    gpus, driver = parse_smi(out)
    plain, _ = _smi()
    return _Cuda(gpus, driver, parse_cuda_version(plain or ""),
                 None if gpus else "nvidia-smi listed no GPU", nodes)


@cache
def detect() -> Machine:
    """This machine's facts, read once per process."""
    model, flags = parse_cpuinfo(_read(cpuinfo_path()))
    cuda = _detect_cuda()
    return Machine(model or platform.processor() or platform.machine(), os.cpu_count() or 1,
                   flags, parse_meminfo(_read("/proc/meminfo")), cuda.nodes, cuda.gpus,
                   cuda.driver, cuda.cuda_version, cuda.problem)


# ---- the facts a measurement's key holds (a step's ``machine_keys``) ----------------------

def gpu_fact(name: str) -> str:
    """The first GPU's name or compute capability, or the driver's CUDA version ("none" without a
    GPU): what a TensorRT engine and its timing cache are built for."""
    m = detect()
    if name == "cuda_version":
        return m.cuda_version or "none"
    if not m.gpus:
        return "none"
    return m.gpus[0].name if name == "gpu_name" else m.gpus[0].compute_capability


def litert_env() -> str:
    """The package versions of the LiteRT steps' own environment (orchestrator.edge)."""
    from orchestrator.edge.litert_env import fingerprint

    return str(fingerprint())


GPU_FACTS = ("gpu_name", "gpu_compute_capability", "cuda_version")
FACTS: dict[str, Callable[[], str]] = {
    "cpu_model": cpu_model, "cpu_count": cpu_count, "litert_env": litert_env,
    **{name: partial(gpu_fact, name) for name in GPU_FACTS},
}
MACHINE_FACTS = tuple(FACTS)


@cache
def fact(name: str) -> str:
    """One fact by the name a step lists in ``machine_keys``."""
    if name not in FACTS:
        raise KeyError(f"unknown machine fact {name!r}; known: {', '.join(sorted(FACTS))}")
    return FACTS[name]()
