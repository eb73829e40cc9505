"""Executors run task specs and report small results; they never decide what to run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.run.executors.base import Executor


def cuda_device_ids() -> list[int]:
    """NVIDIA devices of this machine (/dev/nvidia0, ...), found without importing a CUDA library
    (orchestrator.host.machine.device_nodes: one listing of them)."""
    from orchestrator.host.machine import device_nodes

    return list(device_nodes())


def make_executor(name: str, jobs: int, ray_address: str | None = None, store: Any = None
                  ) -> Executor:
    """The executor a build runs its tasks with: ``local`` (worker processes on this machine) or
    ``ray`` (Ray tasks on a cluster; ``ray`` is imported only then; with the build's store, the
    bytes travel through its remote cache when it has one)."""
    if name == "ray":
        from orchestrator.run.executors.ray_cluster import RayExecutor

        return RayExecutor(ray_address, store)
    from orchestrator.run.executors.local import LocalExecutor

    return LocalExecutor(jobs)
