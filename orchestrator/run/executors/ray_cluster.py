"""Ray executor: each task becomes a Ray task on a node of a cluster.

The Ray task asks for what the step and target ask for: CPUs (clamped to the largest node, as the
local executor clamps to the machine), ``num_gpus`` for a task that needs CUDA devices, memory
(clamped likewise), and a custom resource ``accelerator:<name>`` for a target whose hardware names
an accelerator (a node offers it with ``ray start --resources '{"accelerator:jetson-orin": 1}'``;
each task takes a sliver of it, so the node's CPUs still bound how many run at once).

On its node the Ray task runs the step exactly as a local build does: in a worker process of its
own, under the task's limits (``orchestrator.run.executors.local`` does both), so a native crash stays
in that task and a step failure is a result, not a Ray error: it is never retried. A node or Ray
worker lost under a task is a system failure: Ray runs the task again (``max_retries``).

Only the small spec and result travel through Ray. The bytes (inputs, outputs) go through the
build's remote cache when it has one it may read and write (``--remote-cache``): the build uploads
each task's inputs (blobs, verified by digest like every remote read), the node fetches them into
a cache of its own (``$DEPLOY_BUILD_NODE_CACHE``, else ``<tmp>/deploy-build-node-<uid>/cache``),
runs the step, uploads the outputs, and the build downloads them, verified, before it records the
task. So a node needs no file system in common with the build, only the remote (and, for S3, its
credentials; the storage options of ``DEPLOY_BUILD_REMOTE_OPTIONS`` travel with the task).
Without a remote cache the bytes go through the cache folder named in the spec: every node must
then see the build's cache at the same path (a cluster on one machine, or nodes that mount one
share).

A task that no node of the cluster can run (an accelerator or GPU no node offers) is not queued
forever: ``start`` finishes it at once with the reason. ``ray`` is imported only here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.run.executors.base import Finished, Job

ACCELERATOR_PREFIX = "accelerator:"
ACCELERATOR_SHARE = 0.001  # of a node's accelerator resource, per task
MAX_RETRIES = 2  # reruns after a lost node or Ray worker (never after a step failure)
NODE_CACHE_ENV = "DEPLOY_BUILD_NODE_CACHE"  # a node's own cache, for tasks whose bytes travel
                                            # through the remote cache


def node_cache() -> Path:
    """Where a node keeps what it fetched from the remote cache and what its tasks made."""
    env = os.environ.get(NODE_CACHE_ENV)
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / f"deploy-build-node-{os.getuid()}" / "cache"


def run_on_node(job: dict[str, Any]) -> dict[str, Any]:
    """The Ray task's body: run one job in a local worker process on this node, under its limits
    (with ``portable``: its inputs fetched from the remote cache, its outputs sent there)."""
    if job.get("portable"):
        return _run_portable(job)
    return _run_local(job)


def _run_portable(job: dict[str, Any]) -> dict[str, Any]:
    from orchestrator.store.base import Blob, BlobError
    from orchestrator.store.remote import Remote
    from orchestrator.store.tiered import TieredStore

    job = dict(job)
    how = job.pop("portable")
    store = TieredStore(node_cache(), Remote(how["url"], "readwrite", options=how["options"]))
    scratch = store.scratch(prefix=f"{job['spec']['step']}-")
    try:
        inputs = {}
        for name, ref in sorted(how["inputs"].items()):
            dest = scratch / "in" / name / ref["filename"].rstrip("/")
            store.materialize(Blob.from_json(ref), dest)
            inputs[name] = str(dest)
        spec = {**job["spec"], "inputs": inputs, "out_dir": str(scratch / "out"),
                "result": str(scratch / "result.json"), "store": str(store.root)}
        out = _run_local({**job, "spec": spec, "scratch": str(scratch / "run")})
        if out["ok"] and out["result"] is not None:
            store.remote.upload(store.entry_files({"outputs": out["result"]["outputs"]}))
            if store.remote.disabled is not None:
                out.update(ok=False, result=None,
                           reason=f"its outputs could not be sent to the remote cache "
                                  f"({store.remote.disabled})")
        return out
    except BlobError as e:
        fin = Finished(job["task_id"], False, None, "", 0, 0.0,
                       f"an input could not be fetched from the remote cache on this node: {e}")
        return {**dataclasses.asdict(fin), "node": _node_id()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        store.close()


def _node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


def _run_local(job: dict[str, Any]) -> dict[str, Any]:
    from orchestrator.run.executors.local import LocalExecutor
    from orchestrator.run.worker import TaskSpec

    job = dict(job)
    job["scratch"] = Path(job["scratch"])
    job["spec"] = TaskSpec.from_json(job["spec"])
    local = LocalExecutor(jobs=max(1, int(job["cpu"])), warm=False)  # one task: no server
    local.start(Job(**job))
    try:
        while True:
            for fin in local.poll(0.2):
                out = dataclasses.asdict(fin)
                out["node"] = _node_id()
                return out
    finally:
        local.cancel_all()


@dataclass
class _Submitted:
    job: Job
    ref: Any
    started: float


@dataclass
class RayExecutor:
    """The executor contract of ``LocalExecutor`` (can_start, start, poll, elapsed,
    enforce_limits, cancel_all) on a Ray cluster. ``address`` is a cluster's address (``ray
    start --head`` prints it), or None for a new local one."""

    address: str | None = None
    store: Any = None  # the build's store: with a remote it may read and write, bytes go there
    running: dict[str, _Submitted] = field(default_factory=dict)
    nodes: list[dict[str, float]] = field(default_factory=list)
    ran_on: dict[str, str] = field(default_factory=dict)  # task id -> node id
    _done: list[Finished] = field(default_factory=list)

    def __post_init__(self) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False, include_dashboard=False,
                     configure_logging=False)
        self._remote = ray.remote(run_on_node)
        self.refresh_nodes()

    def refresh_nodes(self) -> None:
        import ray

        listing: Any = ray.nodes  # untyped in ray
        self.nodes = [dict(n["Resources"]) for n in listing() if n.get("Alive")]

    @property
    def jobs(self) -> int:
        return int(sum(n.get("CPU", 0) for n in self.nodes)) or 1

    @property
    def free_cpu(self) -> int:
        return self.jobs - sum(s.job.cpu for s in self.running.values())

    def can_start(self, cpu: int, memory_gb: float = 0.0, cuda: int = 0,
                  exclusive: bool = False) -> bool:
        """Ray queues what the cluster cannot run yet; this keeps about one task per CPU in
        flight so the build's own order (and an exclusive benchmark, which runs alone) holds."""
        if not self.running:
            return True
        if exclusive or any(s.job.exclusive for s in self.running.values()):
            return False
        return min(cpu, self.largest("CPU")) <= self.free_cpu

    def largest(self, resource: str) -> int:
        return int(max((n.get(resource, 0) for n in self.nodes), default=0))

    def resources(self, job: Job) -> dict[str, Any]:
        """The Ray options of a job: clamped CPUs and memory, GPUs, the accelerator resource."""
        opts: dict[str, Any] = {"num_cpus": max(1, min(job.cpu, self.largest("CPU") or 1)),
                                "max_retries": MAX_RETRIES}
        if job.cuda:
            opts["num_gpus"] = job.cuda
        if job.memory_gb:
            opts["memory"] = int(min(job.memory_gb * 2**30, self.largest("memory")))
        accelerator = (job.spec.hardware or {}).get("accelerator")
        if accelerator:
            opts["resources"] = {ACCELERATOR_PREFIX + str(accelerator): ACCELERATOR_SHARE}
        return opts

    def unsatisfiable(self, job: Job) -> str | None:
        """Why no node of the cluster can run this job, or None when one can."""
        opts = self.resources(job)
        needs = {"GPU": float(opts.get("num_gpus", 0)), **opts.get("resources", {})}
        if any(all(n.get(r, 0) >= amount for r, amount in needs.items()) for n in self.nodes):
            return None
        wanted = ", ".join(f"{r} {amount:g}" for r, amount in sorted(needs.items()) if amount)
        return (f"no node of the Ray cluster offers {wanted} "
                f"({len(self.nodes)} node(s) alive); start one with "
                f"`ray start --address ... --resources '{{\"{ACCELERATOR_PREFIX}NAME\": 1}}'`"
                " or --num-gpus")

    def unmet(self, hw: Any) -> list[str]:
        """Why no node of the cluster can run a target with this hardware (a ``Hardware``): a
        cuda target needs a node with a GPU, an accelerator a node that offers its resource.
        CPU features and GPU compute capability are not in Ray's resources: not judged here."""
        needs: dict[str, float] = {}
        if hw.device == "cuda":
            needs["GPU"] = 1
        if hw.accelerator:
            needs[ACCELERATOR_PREFIX + str(hw.accelerator)] = ACCELERATOR_SHARE
        if not needs or any(all(n.get(r, 0) >= a for r, a in needs.items()) for n in self.nodes):
            return []
        wanted = " and ".join(f"{r} {a:g}" if r == "GPU" else r for r, a in sorted(needs.items()))
        return [f"no node of the Ray cluster offers {wanted} ({len(self.nodes)} node(s) alive)"]

    def start(self, job: Job) -> None:
        job.scratch.mkdir(parents=True, exist_ok=True)
        why = self.unsatisfiable(job)
        if why is not None:
            self._done.append(Finished(job.task_id, False, None, "", 0, 0.0, why))
            return
        payload = dataclasses.asdict(job)
        payload["scratch"] = str(job.scratch)
        if self.portable:
            try:
                payload["portable"] = self._send_inputs(job)
            except OSError as e:
                self._done.append(Finished(job.task_id, False, None, "", 0, 0.0,
                                           f"its inputs could not be sent to the remote cache: {e}"))
                return
        ref = self._remote.options(**self.resources(job)).remote(payload)
        self.running[job.task_id] = _Submitted(job, ref, time.monotonic())

    @property
    def portable(self) -> bool:
        """Whether the bytes travel through the build's remote cache (else the shared folder)."""
        remote = getattr(self.store, "remote", None)
        return remote is not None and remote.can_read and remote.can_write

    def _send_inputs(self, job: Job) -> dict[str, Any]:
        """Store the job's inputs as blobs and upload them; what the node needs to fetch them."""
        from orchestrator.plan.sources import StatCache

        digests = StatCache(self.store.index)  # a model folder is hashed once, not per task
        inputs: dict[str, Any] = dict(job.input_blobs)  # placed from the cache: known blobs
        for name, path in sorted(job.spec.inputs.items()):
            if name in inputs:
                continue
            p = Path(path)  # a source (the model folder, the samples): by its stat cache
            blob = (self.store.put_tree(p, digests.file_digest) if p.is_dir()
                    else self.store.put_file(p, digests.file_digest(p)))
            inputs[name] = {**blob.to_json(), "filename": p.name + ("/" if p.is_dir() else "")}
        remote = self.store.remote
        remote.upload(self.store.entry_files({"outputs": inputs}))
        if remote.disabled is not None:
            raise OSError(remote.disabled)
        return {"url": remote.url, "options": remote.options, "inputs": inputs}

    def elapsed(self, task_id: str) -> float:
        return time.monotonic() - self.running[task_id].started

    def poll(self, timeout: float = 0.05) -> list[Finished]:
        import ray

        out, self._done = self._done, []
        if not self.running:
            return out
        by_ref = {s.ref: tid for tid, s in self.running.items()}
        ready, _ = ray.wait(list(by_ref), num_returns=len(by_ref),
                            timeout=0 if out else timeout)
        for ref in ready:
            tid = by_ref[ref]
            sub = self.running.pop(tid)
            try:
                got = ray.get(ref)
            except Exception as e:  # lost past its retries, or cancelled
                out.append(Finished(tid, False, None, "", 0, time.monotonic() - sub.started,
                                    f"the Ray task was lost: {type(e).__name__}: {e}"[:500]))
                continue
            self.ran_on[tid] = str(got.pop("node"))
            if self.portable and got["ok"] and got["result"] is not None:
                got = self._fetch_outputs(got)
            out.append(Finished(**got))
        return out

    def _fetch_outputs(self, got: dict[str, Any]) -> dict[str, Any]:
        """Download (verified) the outputs a node sent to the remote cache; a task whose outputs
        cannot be had fails with the reason."""
        from orchestrator.store.base import Blob

        outputs = got["result"]["outputs"].values()
        problems = self.store.fetch_outputs([Blob.from_json(o) for o in outputs])
        if problems:
            return {**got, "ok": False, "result": None,
                    "reason": f"its outputs could not be fetched from the remote cache: {problems[0]}"}
        return got

    def enforce_limits(self) -> None:
        """Limits are enforced on the node, by the local executor that runs the worker."""

    def cancel_all(self) -> None:
        import ray

        for sub in self.running.values():
            ray.cancel(sub.ref, force=True)
        deadline = time.monotonic() + 10
        for sub in self.running.values():
            with contextlib.suppress(Exception):  # a cancelled ref may raise: only wait for it
                ray.wait([sub.ref], timeout=max(0.1, deadline - time.monotonic()))
        self.running.clear()
