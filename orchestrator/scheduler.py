"""Run a plan: dispatch RUN tasks to the executor in DAG order, re-checking keys as inputs become
known (early cutoff), record action entries only for successful tasks, then write manifests.

Builds sharing a cache build each task once: a task runs under its action key's lock, and a build
that finds the key locked waits (starting other ready tasks meanwhile) and then looks in the store
again. Every running task holds the machine lock shared, a benchmark (an ``exclusive`` step) holds it
exclusive and starts only when nothing else of its build runs (see orchestrator.locks)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from orchestrator.executors import make_executor
from orchestrator.executors.local import Finished, Job, describe_exit
from orchestrator.graph import Task
from orchestrator.locks import BuildLocks
from orchestrator.plan import Decision, Plan, decide, input_digests, usable_entry
from orchestrator.report import Reporter
from orchestrator.store.base import Blob, BlobError
from orchestrator.store.local import LocalStore


@dataclass
class TaskOutcome:
    status: str  # "hit" | "run" | "skip" | "fail"
    key: str | None = None
    entry: dict[str, Any] | None = None
    duration: float = 0.0
    reasons: list[str] = field(default_factory=list)
    error: str | None = None  # the whole message: what failed, the log tail, how to reproduce
    summary: str | None = None  # one line: what failed and why
    log_tail: str | None = None
    reproduce: str | None = None


@dataclass
class Options:
    jobs: int
    fail_fast: bool = False
    executor: str = "local"  # or "ray" (orchestrator.executors.make_executor)
    ray_address: str | None = None


class Interrupted(Exception):
    """The build was stopped by a signal; `code` is the exit code (130 SIGINT, 143 SIGTERM)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cancelled CI job), handled like Ctrl-C."""


def raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def execute(plan: Plan, store: LocalStore, opts: Options, reporter: Reporter,
            repro: dict[str, str]) -> dict[str, TaskOutcome]:
    graph = plan.graph
    tasks = {t.id: t for t in graph.tasks()}
    order = list(tasks)
    outcomes: dict[str, TaskOutcome] = {}
    decisions: dict[str, Decision] = dict(plan.decisions)
    outputs: dict[str, dict[str, Any]] = {}
    executor = make_executor(opts.executor, opts.jobs, opts.ray_address)
    started: dict[str, Job] = {}
    stop = False
    locks = BuildLocks(store.root, getattr(store, "remote", None))
    waiting_exclusive: set[str] = set()  # ready exclusive tasks (benchmarks) waiting to run alone
    waited: set[tuple[str, str]] = set()

    def wait(tid: str, why: str) -> None:
        if (tid, why) not in waited:
            waited.add((tid, why))
            reporter.task_wait(tasks[tid], why)

    def finish(tid: str, outcome: TaskOutcome) -> None:
        outcomes[tid] = outcome
        if outcome.entry is not None:
            outputs[tid] = outcome.entry["outputs"]
        reporter.task_done(tasks[tid], outcome)

    def skip_descendants(tid: str, why: str) -> None:
        for d in sorted(_descendants(graph.dag, tid)):
            if d in tasks and d not in outcomes:
                finish(d, TaskOutcome("skip", reasons=[why]))

    try:
        while True:
            for tid in order:
                if tid in outcomes or tid in started or stop:
                    continue
                d = decisions[tid]
                if d.status == "SKIP":
                    finish(tid, TaskOutcome("skip", reasons=d.reasons))
                    continue
                ups = [u for u in graph.dag.predecessors(tid) if u in tasks]
                if any(u not in outcomes for u in ups):
                    continue
                if d.status == "HIT":
                    finish(tid, TaskOutcome("hit", d.key, d.entry, reasons=d.reasons))
                    continue
                task = tasks[tid]
                if d.key is None:  # inputs are known only now: decide again (early cutoff)
                    digests = input_digests(task, plan.sources, outputs)
                    assert digests is not None
                    d = decide(task, store, digests, forced=plan.forced(task))
                    if d.status == "HIT":
                        d.reasons = ["early cutoff: upstream rebuilt identical bytes"]
                        decisions[tid] = d
                        finish(tid, TaskOutcome("hit", d.key, d.entry, reasons=d.reasons))
                        continue
                    d.reasons = d.reasons if d.reasons != ["not in this cache"] else ["input changed"]
                    decisions[tid] = d
                res = task.resources
                if waiting_exclusive and tid not in waiting_exclusive:
                    continue  # a benchmark waits for the machine to be idle: start nothing new
                if not executor.can_start(res.cpu, res.memory_gb, res.cuda, task.exclusive):
                    if task.exclusive:
                        waiting_exclusive.add(tid)
                    continue
                assert d.key is not None
                if not locks.holds_key(tid):
                    if not locks.lock_key(tid, d.key):
                        wait(tid, "another build is running it: a hit once it is done")
                        continue  # look again once it is done
                    entry = None if plan.forced(task) else usable_entry(store, d.key)[0]
                    if entry is not None:  # it finished while this build planned or waited
                        locks.release(tid)
                        waiting_exclusive.discard(tid)
                        d = Decision("HIT", ["built by another build meanwhile"], d.key, d.doc,
                                     entry)
                        decisions[tid] = d
                        finish(tid, TaskOutcome("hit", d.key, d.entry, reasons=d.reasons))
                        continue
                if not locks.lock_machine(tid, task.exclusive):
                    if task.exclusive:  # another build's tasks run: start nothing until it can
                        waiting_exclusive.add(tid)
                        wait(tid, "it runs alone: waiting for another build's tasks to finish")
                    else:
                        wait(tid, "another build is benchmarking: nothing runs beside it")
                    continue
                waiting_exclusive.discard(tid)
                try:
                    job = _job(task, d, plan, store, outputs, opts)
                except BlobError as e:  # an input blob went missing or bad since planning
                    locks.release(tid)
                    msg = (f"{task.label} could not start: an input in the cache is {e} "
                           "(removed or changed during the build); run the build again: the "
                           "task that made it is rebuilt")
                    finish(tid, TaskOutcome("fail", d.key, reasons=d.reasons, error=msg))
                    skip_descendants(tid, f"upstream {task.label} failed")
                    continue
                started[tid] = job
                executor.start(job)
                reporter.task_start(task, d.reasons)
            if not executor.running and all(t in outcomes or t in started for t in order):
                break
            if not executor.running and stop:
                break
            if not executor.running:
                time.sleep(0.05)  # waiting for another build's locks only
            for fin in executor.poll(0.05):
                job = started[fin.task_id]
                task = tasks[fin.task_id]
                d = decisions[fin.task_id]
                outcome = _record(task, d, fin, store, repro.get(fin.task_id, ""))
                locks.release(fin.task_id)  # after the entry is written (or the task failed)
                shutil.rmtree(job.scratch, ignore_errors=True)
                finish(fin.task_id, outcome)
                if outcome.status == "fail":
                    skip_descendants(fin.task_id, f"upstream {task.label} failed")
                    if opts.fail_fast:
                        stop = True
                        executor.cancel_all()
                        for tid, j in started.items():
                            if tid not in outcomes:
                                shutil.rmtree(j.scratch, ignore_errors=True)
                                finish(tid, TaskOutcome("skip", reasons=["stopped by --fail-fast"]))
            reporter.tick(executor)
        for tid in order:
            if tid not in outcomes:
                finish(tid, TaskOutcome("skip", reasons=["stopped by --fail-fast"]))
    except KeyboardInterrupt as e:
        raise Interrupted(143 if isinstance(e, Terminated) else 130) from None
    finally:  # whatever stops the loop, no worker outlives it and no scratch is left
        executor.cancel_all()
        locks.release_all()
        for job in started.values():
            shutil.rmtree(job.scratch, ignore_errors=True)
    return outcomes


def _descendants(dag: Any, node: str) -> set[str]:
    import networkx as nx

    return set(nx.descendants(dag, node))


def _job(task: Task, d: Decision, plan: Plan, store: LocalStore,
         outputs: dict[str, dict[str, Any]], opts: Options) -> Job:
    scratch = store.scratch(prefix=f"{task.step}-")
    inputs: dict[str, str] = {}
    for name, (node, out) in task.inputs.items():
        if node in plan.sources:
            inputs[name] = str(plan.sources[node].path)
            continue
        ref = outputs[node][out]
        dest = scratch / "in" / name / ref["filename"].rstrip("/")
        try:
            store.materialize(Blob.from_json(ref), dest)
        except BlobError:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        inputs[name] = str(dest)
    spec = {
        "ref": task.info.ref,
        "step": task.step,
        "params": task.params,  # what was keyed: completed, unused params at their defaults
        "inputs": inputs,
        "out_dir": str(scratch / "out"),
        "hardware": task.hardware,
        "model": task.model,
        "threads": max(1, min(task.resources.cpu, opts.jobs)),
        "store": str(store.root),
        "reference": task.reference,
    }
    res = task.resources
    job = Job(task.id, spec, scratch, res.cpu, task.label, res.memory_gb, res.cuda,
              exclusive=task.exclusive)
    for name in ("timeout_s", "max_memory_mb"):  # per-step limits, enforced by the executor
        lim = getattr(task.limits, name, None)
        if lim is not None:
            setattr(job, name, lim.value)
            job.limit_where[name] = lim.where
    return job


def _record(task: Task, d: Decision, fin: Finished, store: LocalStore, repro: str) -> TaskOutcome:
    if not fin.ok or fin.result is None:
        why = fin.reason or (describe_exit(fin.returncode) if fin.returncode != 0
                             else "worker wrote no result")
        summary = f"{task.label} failed ({why}) after {fin.duration:.1f}s"
        tail = fin.log_tail()
        msg = f"{summary}\n--- log tail ---\n{tail}\n--- reproduce alone: {repro}"
        return TaskOutcome("fail", d.key, None, fin.duration, d.reasons, msg, summary, tail, repro)
    assert d.key is not None and d.doc is not None
    log_blob = store.put_bytes(fin.log.encode())
    entry = {
        "outputs": fin.result["outputs"],
        "metrics": fin.result["metrics"],
        "warnings": fin.result["warnings"],
        "log": log_blob.digest,
        "doc": d.doc,
    }
    store.put_action(d.key, entry)
    for recipe, target, pos in task.labels:
        store.set_meta(f"last:{recipe}/{target}/{pos}", d.doc)
    return TaskOutcome("run", d.key, entry, fin.duration, d.reasons)


def remember_hits(plan: Plan, outcomes: dict[str, TaskOutcome], store: LocalStore) -> None:
    """Record the key document of every hit under each of its labels, so later reasons compare
    against what this build used."""
    for tid, o in outcomes.items():
        if o.status == "hit" and o.entry is not None:
            task = plan.graph.task(tid)
            for recipe, target, pos in task.labels:
                k = f"last:{recipe}/{target}/{pos}"
                if store.get_meta(k) != o.entry["doc"]:
                    store.set_meta(k, o.entry["doc"])
