"""orchestrator.host.machine: the parsers on literal driver/kernel text, and detection on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.host import machine
from orchestrator.host.machine import (
    Gpu,
    detect,
    device_nodes,
    parse_cpuinfo,
    parse_cuda_version,
    parse_meminfo,
    parse_smi,
)

CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_int8 amx_tile
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu
"""
ARM = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU part\t: 0xd0c\n"
SMI = "0, NVIDIA A100-SXM4-80GB, 8.0, 81920, 550.54.15\n1, Tesla T4, 7.5, 15360, 550.54.15\n"


def test_cpuinfo_gives_the_model_and_the_first_processors_flags() -> None:
    model, flags = parse_cpuinfo(CPUINFO)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert {"avx512_vnni", "amx_int8"} <= flags and "fpu" in flags
    assert parse_cpuinfo(ARM) == ("", frozenset({"fp", "asimd", "asimddp", "i8mm"}))


def test_meminfo_and_nvidia_smi_outputs() -> None:
    assert parse_meminfo("MemTotal:       16384000 kB\nMemFree: 1 kB\n") == 16384000 * 1024 / 1e9
    assert parse_meminfo("") == 0.0
    gpus, driver = parse_smi(SMI + "garbage line\n")
    assert gpus == (Gpu(0, "NVIDIA A100-SXM4-80GB", "8.0", 81920 * 2**20 / 1e9),
                    Gpu(1, "Tesla T4", "7.5", 15360 * 2**20 / 1e9))
    assert driver == "550.54.15"
    header = "| NVIDIA-SMI 550.54.15  Driver Version: 550.54.15  CUDA Version: 12.4 |"
    assert parse_cuda_version(header) == "12.4"
    assert parse_cuda_version("no header") is None


def test_device_nodes_are_the_numbered_nvidia_nodes(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidia3", "nvidiactl", "nvidia-uvm", "null"):
        (tmp_path / name).touch()
    assert device_nodes(tmp_path) == (0, 3)
    assert device_nodes(tmp_path / "absent") == ()


def test_detect_reads_this_machine_without_torch() -> None:
    m = detect()
    assert m.cpu_count >= 1 and m.cpu_model and m.memory_gb > 0
    assert detect() is m  # once per process
    assert bool(m.device_nodes) == bool(device_nodes())
    code = ("import sys; from orchestrator.host.machine import detect; detect(); "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_facts_by_name_and_an_unknown_one() -> None:
    assert machine.fact("cpu_count") == str(os.cpu_count())
    assert machine.fact("cpu_model") == machine.cpu_model() != ""
    with pytest.raises(KeyError, match="unknown machine fact 'gpu'; known: cpu_count, cpu_model"):
        machine.fact("gpu")


def test_the_benchmark_reports_the_fact_its_key_holds() -> None:
    from orchestrator.steps import benchmark

    assert benchmark.cpu_model is machine.cpu_model
