"""Can this machine build and measure a target? Pure functions of the recipe's hardware, the tasks
and the machine's facts (orchestrator.host.machine), used by planning (clean skips) and `doctor`.

A target whose hardware or runtime is absent is skipped with the precise reason. Only its
hardware-bound tasks (steps with hardware or machine keys, or that need a CUDA device) are
skipped; the hardware-independent ones (export, optimize, quantize) still build and are cached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator import formats
from orchestrator.host.machine import Gpu, Machine
from orchestrator.step import Hardware

GPU_EXTRA = "pip install 'deploy-build[gpu]'"
# the distribution that runs an engine of this format on a CUDA device (None: no CUDA runtime)
CUDA_RUNTIME: dict[str, str | None] = {
    formats.ONNX: "onnxruntime-gpu",
    formats.OPENVINO_IR: None,
    formats.TORCHSCRIPT: "torch",
    formats.HF_MODEL: "torch",
    "tensorrt-engine": "tensorrt",
    formats.TFLITE: None,
}


def _needs(hw: Hardware) -> str:
    parts = []
    if hw.accelerator:
        parts.append(f"accelerator {hw.accelerator}")
    if hw.requires.compute_capability is not None:
        parts.append(f"compute capability >= {hw.requires.compute_capability:.1f}")
    if hw.requires.memory_gb is not None:
        parts.append(f">= {hw.requires.memory_gb:g} GB of GPU memory")
    return "cuda " + ", ".join(parts) if parts else "a CUDA device"


def _capability(gpu: Gpu) -> float:
    try:
        return float(gpu.compute_capability)
    except ValueError:
        return 0.0


def _gpu_fits(hw: Hardware, gpu: Gpu) -> bool:
    req = hw.requires
    return ((req.compute_capability is None or _capability(gpu) >= req.compute_capability)
            and (req.memory_gb is None or gpu.memory_gb >= req.memory_gb)
            and (not hw.accelerator or hw.accelerator.lower() in gpu.name.lower()))


def unmet(hw: Hardware, m: Machine) -> list[str]:
    """Why this machine cannot run a target with this hardware (empty: it can)."""
    reasons: list[str] = []
    missing = [f for f in hw.requires.cpu_features if f not in m.cpu_flags]
    if missing:
        reasons.append(f"needs CPU features {', '.join(missing)}; this CPU ({m.cpu_model}) has "
                       "none of them" if len(missing) > 1 else
                       f"needs CPU feature {missing[0]}; this CPU ({m.cpu_model}) lacks it")
    if hw.device == "cpu" and hw.requires.memory_gb is not None \
            and m.memory_gb < hw.requires.memory_gb:
        reasons.append(f"needs {hw.requires.memory_gb:g} GB of memory; this machine has "
                       f"{m.memory_gb:.1f} GB")
    if hw.device == "cuda":
        if not m.gpus:
            why = f" ({m.gpu_problem})" if m.gpu_problem else ""
            reasons.append(f"needs {_needs(hw)}; this machine has no CUDA device{why}")
        elif not any(_gpu_fits(hw, g) for g in m.gpus):
            have = "; ".join(g.describe() for g in m.gpus)
            reasons.append(f"needs {_needs(hw)}; this machine's GPUs: {have}")
    return reasons


def installed(dist: str) -> str | None:
    """The installed version of a distribution, or None (read from metadata, never imported)."""
    from orchestrator.host.versions import dist_version

    v = dist_version(dist)
    return None if v == "not-installed" else v


def runtime_problem(task: Any, toolchain: tuple[str, ...], local_cuda: bool = True) -> str | None:
    """Why a task cannot run here for want of a runtime (None: it can): a distribution of its
    toolchain that is not installed, or, for a check on a cuda target, no CUDA runtime for the
    engine it measures."""
    env = getattr(task.info.cls, "environment_problem", None)  # a step with its own environment
    why = env(task.step) if callable(env) else None
    if why:
        return str(why)
    for dist in toolchain:
        if installed(dist) is None:
            return f"{task.step} needs {dist}, which is not installed here{_hint(dist)}"
    if task.hardware.get("device", "cpu") != "cuda" or task.info.cls.kind != "check" \
            or not local_cuda:  # on a cluster, the GPU nodes' runtimes are theirs
        return None
    fmt = task.input_formats.get("model", "")
    if fmt not in CUDA_RUNTIME:
        return None
    gpu_dist = CUDA_RUNTIME[fmt]
    if gpu_dist is None:
        return f"{task.step} on a cuda target: {fmt} engines run on the CPU only; give the " \
               "target hardware: {device: cpu}"
    if installed(gpu_dist) is None:
        return (f"{task.step} on a cuda target needs {gpu_dist}, which is not installed "
                f"here{_hint(gpu_dist)}")
    return None


def _hint(dist: str) -> str:
    return f" ({GPU_EXTRA})" if dist in ("tensorrt", "onnxruntime-gpu") else ""


def hardware_bound(task: Any) -> bool:
    """A task whose result depends on where it runs: it is skipped with its target."""
    cls = task.info.cls
    return bool(cls.hardware_keys or cls.machine_keys or task.resources.cuda)


@dataclass
class Fit:
    """What this machine skips: task id -> reason, and "recipe/target" -> reason."""

    tasks: dict[str, str] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)


def fit_graph(graph: Any, m: Machine,
              cluster: Callable[[Hardware], list[str]] | None = None) -> Fit:
    """The tasks and targets of a build graph this machine skips, each with its reason. With
    ``cluster`` (a Ray cluster's view, executors.ray_cluster.cluster_unmet) a target's hardware
    is judged by the cluster's nodes instead of this machine."""
    from orchestrator.plan import task_toolchain

    fit = Fit()
    unfit: dict[tuple[str, str], str] = {}
    for tp in graph.targets:
        hw = tp.recipe.hardware_of(tp.name)
        reasons = unmet(hw, m) if cluster is None else cluster(hw)
        if reasons:
            unfit[(tp.recipe.name, tp.name)] = "; ".join(reasons)
    for task in graph.tasks():
        users = [(r, t) for r, t, _ in task.labels]
        problem = unfit[users[0]] if hardware_bound(task) and all(u in unfit for u in users) \
            else runtime_problem(task, task_toolchain(task), local_cuda=cluster is None)
        if problem is not None:
            fit.tasks[task.id] = problem
    for tp in graph.targets:
        label = f"{tp.recipe.name}/{tp.name}"
        why = unfit.get((tp.recipe.name, tp.name)) or next(
            (fit.tasks[t] for t in tp.task_ids() if t in fit.tasks), None)
        if why is not None:
            fit.targets[label] = why
    return fit
