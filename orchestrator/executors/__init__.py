"""Executors run task specs and report small results; they never decide what to run."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.executors.base import Executor


def cuda_device_ids() -> list[int]:
    """NVIDIA devices of this machine (/dev/nvidia0, ...), found without importing a CUDA library."""
    try:
        names = os.listdir("/dev")
    except OSError:  # pragma: no cover
        return []
    return sorted(int(n[6:]) for n in names if n.startswith("nvidia") and n[6:].isdigit())


def make_executor(name: str, jobs: int, ray_address: str | None = None, store: Any = None
                  ) -> Executor:
    """The executor a build runs its tasks with: ``local`` (worker processes on this machine) or
    ``ray`` (Ray tasks on a cluster; ``ray`` is imported only then; with the build's store, the
    bytes travel through its remote cache when it has one)."""
    if name == "ray":
        from orchestrator.executors.ray_cluster import RayExecutor

        return RayExecutor(ray_address, store)
    from orchestrator.executors.local import LocalExecutor

    return LocalExecutor(jobs)
