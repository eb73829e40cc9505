"""What every executor takes and gives back: a `Job` (one task's spec, its scratch folder and what
it needs) and a `Finished` (its result as a small value), and the `Executor` protocol the
scheduler drives. Local (a worker process per task) and Ray implement it and pass the same
contract tests (tests/test_executor_contract.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from orchestrator.run.worker import TaskSpec

LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class Job:
    """One task for an executor: its spec (what the worker reads), its scratch folder (the spec,
    log and result are written there) and what it needs. Executors never change it."""

    task_id: str
    spec: TaskSpec
    scratch: Path
    cpu: int
    label: str = ""
    memory_gb: float = 0.0
    cuda: int = 0
    timeout_s: float | None = None
    max_memory_mb: float | None = None
    limit_where: dict[str, str] = field(default_factory=dict)  # limit name -> where it was set
    exclusive: bool = False  # runs alone: starts only when nothing runs, and nothing beside it
    # input name -> the blob (Blob.to_json() and its filename) an input placed from the cache
    # is, so an executor that ships inputs elsewhere (Ray over the remote cache) need not
    # hash them again; sources (the model folder, the samples) are not in it
    input_blobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # modules its step imports (Step.preload), which a warm worker server may import ahead
    preload: tuple[str, ...] = ()


@dataclass
class Finished:
    task_id: str
    ok: bool
    result: dict[str, Any] | None
    log: str
    returncode: int
    duration: float
    reason: str | None = None  # why this side killed it (a limit), else None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log.rstrip().splitlines()[-lines:])




class Executor(Protocol):
    """Runs jobs and reports them finished; never decides what to run."""

    @property
    def running(self) -> Mapping[str, Any]:
        """Task id -> what runs it (with its ``job``)."""

    def can_start(self, cpu: int, memory_gb: float = 0.0, cuda: int = 0,
                  exclusive: bool = False) -> bool: ...

    def start(self, job: Job) -> None: ...

    def poll(self, timeout: float = 0.05) -> list[Finished]: ...

    def elapsed(self, task_id: str) -> float: ...

    def cancel_all(self) -> None: ...
