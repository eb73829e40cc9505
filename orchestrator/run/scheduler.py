"""Run a plan (`Scheduler`): start RUN tasks on the executor in DAG order, decide again a task
whose key is known only once its inputs are built (early cutoff), and record action entries for
successful tasks only. Judging the targets and writing manifests is the build command's part
(commands/build.py), after this.

Builds sharing a cache build each task once: a task runs under its action key's lock, and a build
that finds the key locked waits (starting other ready tasks meanwhile) and then looks in the store
again. Every running task holds the machine lock shared, a benchmark (an ``exclusive`` step) holds it
exclusive and starts only when nothing else of its build runs (see orchestrator.store.locks)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from orchestrator.errors import Terminated
from orchestrator.plan import Decision, Plan, decide, input_digests, usable_entry
from orchestrator.plan.graph import Task
from orchestrator.run.progress import Reporter
from orchestrator.store import index as index_keys
from orchestrator.store.base import ActionEntry, Blob, BlobError, Store
from orchestrator.store.locks import BuildLocks

if TYPE_CHECKING:
    from orchestrator.run.executors.base import Executor, Finished, Job

WAIT_REPORT_S = 120.0  # a task waiting for another build's lock says so again this often


@dataclass
class TaskOutcome:
    status: str  # "hit" | "run" | "skip" | "fail"
    key: str | None = None
    entry: ActionEntry | None = None
    duration: float = 0.0
    reasons: list[str] = field(default_factory=list)
    error: str | None = None  # the whole message: what failed, the log tail, how to reproduce
    summary: str | None = None  # one line: what failed and why
    log_tail: str | None = None
    reproduce: str | None = None
    pruned: bool = False  # a speed check not run: every target using it failed an untimed gate


@dataclass
class Options:
    jobs: int
    fail_fast: bool = False
    executor: str = "local"  # or "ray" (orchestrator.run.executors.make_executor)
    ray_address: str | None = None
    lock_timeout: float | None = None  # seconds a task may wait for another build's lock


class Interrupted(Exception):
    """The build was stopped by a signal; `code` is the exit code (130 SIGINT, 143 SIGTERM)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code




# Why a speed check need not run (every target using it already failed an untimed gate), given
# the outcomes so far; None: run it
Prune = Callable[[Task, dict[str, "TaskOutcome"]], str | None]


def execute(plan: Plan, store: Store, opts: Options, reporter: Reporter,
            repro: dict[str, str], prune: Prune | None = None) -> dict[str, TaskOutcome]:
    """Run the plan's RUN tasks (see Scheduler); returns every task's outcome."""
    return Scheduler(plan, store, opts, reporter, repro, prune).run()


class Scheduler:
    """One build's loop, in named parts: the ready queue (tasks whose upstreams are finished, in
    plan order), re-deciding a task whose key is known only now (early cutoff), starting it (under
    its key and machine locks), collecting finished tasks, and stopping (--fail-fast, a signal)."""

    def __init__(self, plan: Plan, store: Store, opts: Options, reporter: Reporter,
                 repro: dict[str, str], prune: Prune | None = None) -> None:
        self.plan, self.store, self.opts, self.reporter, self.repro = (
            plan, store, opts, reporter, repro)
        self.prune = prune
        self.tasks = _by_priority(plan)
        self.decisions: dict[str, Decision] = dict(plan.decisions)
        self.outcomes: dict[str, TaskOutcome] = {}
        self.outputs: dict[str, dict[str, Any]] = {}  # task id -> its output blobs (JSON)
        self.started: dict[str, Job] = {}
        self._executor: Executor | None = None  # made when a task first starts (`executor`)
        self.locks = BuildLocks(store.root, getattr(store, "remote", None))
        self.waiting_exclusive: set[str] = set()  # ready exclusive tasks waiting to run alone
        self._kept: set[str] = set()  # speed checks the prune rule kept (asked once each)
        self.groups: dict[str, list[str]] = {}  # lead task id -> the tasks running with it
        self._waits: dict[str, tuple[float, float, str]] = {}  # tid -> (since, last said, why)

    def run(self) -> dict[str, TaskOutcome]:
        try:
            with self.locks:  # whatever stops the loop, every lock goes with it
                self._loop()
        except KeyboardInterrupt as e:
            raise Interrupted(143 if isinstance(e, Terminated) else 130) from None
        finally:  # whatever stops the loop, no worker outlives it and no scratch is left
            if self._executor is not None:
                self._executor.cancel_all()
            for job in self.started.values():
                shutil.rmtree(job.scratch, ignore_errors=True)
        return self.outcomes

    def _loop(self) -> None:
        while not self.done():
            finished = len(self.outcomes)
            self.start_ready()
            if self.done():
                break
            if len(self.outcomes) > finished and not self.running():
                continue  # hits freed tasks ordered before them (Task.after): look again now
            if not self.running():
                time.sleep(0.05)  # nothing runs: waiting for another build's locks only
            self.collect()
            if self._executor is not None:  # a build that starts nothing never makes one
                self.reporter.tick(self._executor)

    @property
    def executor(self) -> Executor:
        """The executor, made when first needed: a build that starts nothing (a no-op) never
        loads one."""
        if self._executor is None:
            from orchestrator.run.executors import make_executor

            self._executor = make_executor(self.opts.executor, self.opts.jobs,
                                           self.opts.ray_address, self.store)
        return self._executor

    def running(self) -> bool:
        return self._executor is not None and bool(self._executor.running)

    def done(self) -> bool:
        return len(self.outcomes) == len(self.tasks) and not self.running()

    # ---- the ready queue -----------------------------------------------------------------
    def ready(self) -> Iterator[Task]:
        """Tasks neither finished nor started whose upstream tasks have all finished, in plan
        order; evaluated lazily, so a task finished on the way frees its downstream at once."""
        preds = self.plan.graph.dag.predecessors
        for tid, task in self.tasks.items():
            if tid in self.outcomes or tid in self.started:
                continue
            if self.decisions[tid].status == "SKIP" or all(
                    u in self.outcomes for u in [*preds(tid), *task.after] if u in self.tasks):
                yield task

    def start_ready(self) -> None:
        """Start what can start. Speed checks that can share a window (`Step.group_key`) wait
        until no other task of this build runs or could start: then every one that is ready is
        timed together, one group per model source (`start_group`)."""
        deferred: list[tuple[Task, Decision]] = []
        busy = self._running_plain()
        for task in self.ready():
            d = self.settle(task)
            if d is None:
                continue
            if self.groupable(task):
                deferred.append((task, d))
            elif self.waiting_exclusive and task.id not in self.waiting_exclusive:
                continue  # a benchmark waits for the machine: nothing new starts
            elif not self.may_start(task):
                busy = True  # no room now: it starts before the speed checks
            elif self.claim(task, d):
                self.start(task, d)
                busy = True
        if deferred and not busy:
            self.start_group(deferred)

    def groupable(self, task: Task) -> bool:
        cls = task.info.cls
        return bool(task.exclusive and self.opts.executor == "local"
                    and cls.group_key(cls.Params.model_validate(task.params)) is not None)

    def _running_plain(self) -> bool:
        if self._executor is None:
            return False
        return any(not getattr(getattr(r, "job", None), "exclusive", False)
                   for r in self._executor.running.values())

    def start_group(self, ready: list[tuple[Task, Decision]]) -> None:
        """Start the first group of ready speed checks that can share a window: same step, same
        ``group_key``, same model source and hardware. Its first task is the lead (it holds the
        machine lock alone); the others join when their key locks are free."""
        groups: dict[str, list[tuple[Task, Decision]]] = {}
        for task, d in ready:
            groups.setdefault(_group_of(task), []).append((task, d))
        for members in groups.values():
            lead, d = members[0]
            if not (self.may_start(lead) and self.claim(lead, d)):
                continue
            joined = [(t, md) for t, md in members[1:] if self.claim_key(t, md)]
            self.start(lead, d, joined)
            return

    def settle(self, task: Task) -> Decision | None:
        """Finish a task that needs no run (SKIP, HIT, a hit found only now); else its RUN
        decision, with a key."""
        d = self.decisions[task.id]
        if d.status == "SKIP":
            self.finish(task.id, TaskOutcome("skip", reasons=d.reasons))
            return None
        if d.key is None:
            d = self.redecide(task)
        if d.status == "HIT":
            self.finish(task.id, TaskOutcome("hit", d.key, d.entry, reasons=d.reasons))
            return None
        why = None
        if self.prune and task.info.cls.measures_speed and task.id not in self._kept:
            why = self.prune(task, self.outcomes)  # final once its untimed checks finished
            self._kept.add(task.id)
        if why is not None:  # cheap gates first: nothing to time for a target that failed
            self.finish(task.id, TaskOutcome("skip", d.key, reasons=[why], pruned=True))
            return None
        return d

    def redecide(self, task: Task) -> Decision:
        """Decide again a task whose inputs are known only now: a hit if the upstream rebuilt
        identical bytes (early cutoff), or if another build built it meanwhile (its upstream
        came from the cache too: nothing was rebuilt here)."""
        digests = input_digests(task, self.plan.sources, self.outputs)
        assert digests is not None  # every upstream has finished
        d = decide(task, self.store, digests, forced=self.plan.forced(task), after_upstream=True)
        if d.status == "HIT":
            upstream = self.plan.graph.dag.predecessors(task.id)
            rebuilt = any(self.outcomes[u].status == "run" for u in upstream if u in self.outcomes)
            d = replace(d, reasons=["early cutoff: upstream rebuilt identical bytes" if rebuilt
                                    else "built by another build meanwhile"])
        self.decisions[task.id] = d
        return d

    # ---- starting a task -----------------------------------------------------------------
    def may_start(self, task: Task) -> bool:
        """Whether the executor has room for it now. A waiting benchmark blocks new starts."""
        if self.waiting_exclusive and task.id not in self.waiting_exclusive:
            return False  # a benchmark waits for the machine to be idle: start nothing new
        res = task.resources
        if self.executor.can_start(res.cpu, res.memory_gb, res.cuda, task.exclusive):
            return True
        if task.exclusive:
            self.waiting_exclusive.add(task.id)
        return False

    def claim_key(self, task: Task, d: Decision) -> bool:
        """Take the task's key lock; False to look again later (another build runs it). A key
        another build finished meanwhile is a hit (finished here)."""
        assert d.key is not None
        if self.locks.holds_key(task.id):
            return True
        if not self.locks.lock_key(task.id, d.key, task.label):
            self.wait(task, "another build is running it: a hit once it is done")
            return False
        entry = None if self.plan.forced(task) else usable_entry(self.store, d.key)[0]
        if entry is not None:  # it finished while this build planned or waited
            self.locks.release(task.id)
            self.waiting_exclusive.discard(task.id)
            hit = Decision("HIT", ["built by another build meanwhile"], d.key, d.doc, entry)
            self.decisions[task.id] = hit
            self.finish(task.id, TaskOutcome("hit", hit.key, entry, reasons=hit.reasons))
            return False
        return True

    def claim(self, task: Task, d: Decision) -> bool:
        """Take the task's key lock and the machine lock; False to look again later (another
        build runs it, or benchmarks). A key another build finished meanwhile is a hit."""
        if not self.claim_key(task, d):
            return False
        if self.locks.lock_machine(task.id, task.exclusive, task.label):
            self.waiting_exclusive.discard(task.id)
            self._waits.pop(task.id, None)
            return True
        if task.exclusive:  # another build's tasks run: start nothing until it can
            self.waiting_exclusive.add(task.id)
            self.wait(task, "it runs alone: waiting for the machine")
        else:
            self.wait(task, "another build is benchmarking or about to: nothing starts beside it")
        return False

    def start(self, task: Task, d: Decision,
              group: list[tuple[Task, Decision]] | None = None) -> None:
        """Start a task, with the tasks of its group (`start_group`) running in its worker."""
        jobs = []
        for t, td in [(task, d), *(group or [])]:
            try:
                jobs.append((t, td, _job(t, td, self.plan, self.store, self.outputs, self.opts)))
            except BlobError as e:  # an input blob went missing or bad since planning
                self.locks.release(t.id)
                msg = (f"{t.label} could not start: an input in the cache is {e} (removed or "
                       "changed during the build); run the build again: the task that made it "
                       "is rebuilt")
                self.fail(t, TaskOutcome("fail", td.key, reasons=td.reasons, error=msg))
                if t is task:
                    for other, _, job in jobs[1:]:
                        self.locks.release(other.id)
                        shutil.rmtree(job.scratch, ignore_errors=True)
                    return
        lead = jobs[0][2]
        if len(jobs) > 1:
            lead = _group_job(lead, [job for _, _, job in jobs[1:]])
            self.groups[task.id] = [t.id for t, _, _ in jobs[1:]]
        for t, td, job in jobs:
            self.started[t.id] = lead if t is task else job
            self.reporter.task_start(t, td.reasons)
        self.executor.start(lead)

    # ---- collecting finished tasks, and stopping -----------------------------------------
    def collect(self) -> None:
        if self._executor is None:
            return
        for fin in self._executor.poll(0.05):
            members = [_member_finished(fin, self.started[m]) for m in self.groups.pop(fin.task_id, [])]
            for f in [*members, fin]:  # the group's members first: the lead's scratch holds theirs
                task = self.tasks[f.task_id]
                outcome = _record(task, self.decisions[task.id], f, self.store,
                                  self.repro.get(task.id, ""))
                self.locks.release(task.id)  # after the entry is written (or the task failed)
                shutil.rmtree(self.started[task.id].scratch, ignore_errors=True)
                if outcome.status == "fail":
                    self.fail(task, outcome)
                else:
                    self.finish(task.id, outcome)

    def fail(self, task: Task, outcome: TaskOutcome) -> None:
        self.finish(task.id, outcome)
        for d in sorted(self.plan.graph.dag.descendants(task.id)):
            if d in self.tasks and d not in self.outcomes:
                self.finish(d, TaskOutcome("skip", reasons=[f"upstream {task.label} failed"]))
        if self.opts.fail_fast:
            self.stop("stopped by --fail-fast")

    def stop(self, why: str) -> None:
        """Cancel what runs and finish every unfinished task as skipped, with why."""
        if self._executor is not None:
            self._executor.cancel_all()
        for tid in self.tasks:
            if tid not in self.outcomes:
                if tid in self.started:
                    shutil.rmtree(self.started[tid].scratch, ignore_errors=True)
                self.finish(tid, TaskOutcome("skip", reasons=[why]))

    def finish(self, tid: str, outcome: TaskOutcome) -> None:
        self.outcomes[tid] = outcome
        if outcome.entry is not None:
            self.outputs[tid] = outcome.entry.outputs
        self.reporter.task_done(self.tasks[tid], outcome)

    def wait(self, task: Task, why: str) -> None:
        """Report that a task waits for another build's lock, naming the holder: when it starts
        waiting, when the reason changes and every ``WAIT_REPORT_S``; past ``--lock-timeout``,
        fail it with the same words."""
        now = time.monotonic()
        since, said, before = self._waits.get(task.id, (now, -WAIT_REPORT_S, ""))
        waited = now - since
        limit = self.opts.lock_timeout
        if limit is not None and waited >= limit:
            msg = (f"{task.label} gave up after waiting {waited:.0f} s (--lock-timeout "
                   f"{limit:g}): {why}; {self.locks.holders(task.id)}")
            self._waits.pop(task.id, None)
            self.locks.release(task.id)
            self.waiting_exclusive.discard(task.id)
            self.fail(task, TaskOutcome("fail", self.decisions[task.id].key, error=msg,
                                        summary=msg, reasons=self.decisions[task.id].reasons))
            return
        if why != before or now - said >= WAIT_REPORT_S:
            self._waits[task.id] = (since, now, why)
            text = f"{why}; {self.locks.holders(task.id)}"
            if waited >= 1:
                text += f"; waiting {waited:.0f} s so far"
            self.reporter.task_wait(task, text)
        else:
            self._waits[task.id] = (since, said, why)


def _job(task: Task, d: Decision, plan: Plan, store: Store,
         outputs: dict[str, dict[str, Any]], opts: Options) -> Job:
    """The executor's job for a task: its inputs placed in a fresh scratch folder."""
    from orchestrator.run.executors.base import Job
    from orchestrator.run.worker import TaskSpec

    scratch = store.scratch(prefix=f"{task.step}-")
    inputs: dict[str, str] = {}
    blobs: dict[str, dict[str, Any]] = {}
    for name, (node, out) in task.inputs.items():
        if node in plan.sources:
            inputs[name] = str(plan.sources[node].path)
            continue
        ref = outputs[node][out]
        blobs[name] = dict(ref)
        dest = scratch / "in" / name / ref["filename"].rstrip("/")
        try:
            store.materialize(Blob.from_json(ref), dest)
        except BlobError:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        inputs[name] = str(dest)
    spec = TaskSpec(
        ref=task.info.ref, step=task.step, params=task.params, inputs=inputs,
        out_dir=str(scratch / "out"), result=str(scratch / "result.json"),
        hardware=task.hardware, model=task.model,
        threads=max(1, min(task.resources.cpu, opts.jobs)), store=str(store.root),
        reference=task.reference)
    res, lim = task.resources, task.limits
    timeout = lim.timeout_s if lim is not None else None  # per-step limits, for the executor
    memory = lim.max_memory_mb if lim is not None else None
    where = {n: v.where for n, v in (("timeout_s", timeout), ("max_memory_mb", memory)) if v}
    return Job(task.id, spec, scratch, res.cpu, task.label, res.memory_gb, res.cuda,
               timeout_s=timeout.value if timeout else None,
               max_memory_mb=memory.value if memory else None, limit_where=where,
               exclusive=task.exclusive, input_blobs=blobs,
               preload=tuple(getattr(task.info.cls, "preload", ())))


def _by_priority(plan: Plan) -> dict[str, Task]:
    """The plan's tasks, those with the most tasks waiting on them first (the export before a
    quantization, the PyTorch parity reference beside the export, not after every
    quantization), plan order among equals: two job slots are not left idle while a task many
    others wait for has not started."""
    dag = plan.graph.dag
    tasks = plan.graph.tasks()
    order = {t.id: i for i, t in enumerate(tasks)}
    return {t.id: t for t in sorted(tasks, key=lambda t: (-len(dag.descendants(t.id)),
                                                             order[t.id]))}


def _group_of(task: Task) -> str:
    """Which speed checks may share one window: the same step and group key, the same model
    source (the reference) and hardware."""
    cls = task.info.cls
    key = cls.group_key(cls.Params.model_validate(task.params))
    return repr((task.info.ref, key, task.inputs.get("source"), sorted(task.hardware.items())))


def _group_job(lead: Job, members: list[Job]) -> Job:
    """The lead's job carrying its group's specs (its worker runs them all, Step.run_group);
    limits: the sum of the timeouts (none if one has none), the largest memory limit."""
    timeouts = [j.timeout_s for j in (lead, *members)]
    memory = [j.max_memory_mb for j in (lead, *members)]
    spec = replace(lead.spec, group=[m.spec.to_json() for m in members])
    return replace(lead, spec=spec,
                   timeout_s=None if None in timeouts else sum(t for t in timeouts if t),
                   max_memory_mb=None if None in memory else max(m for m in memory if m),
                   label=f"{lead.label} (+{len(members)} timed with it)")


def _member_finished(lead: Finished, job: Job) -> Finished:
    """What became of a task that ran in its lead's worker: its own result file, else its own
    error file, else the lead's failure."""
    import json
    from pathlib import Path

    from orchestrator.run.executors.base import Finished

    result = Path(job.spec.result)
    if result.is_file():
        return Finished(job.task_id, True, json.loads(result.read_text()), lead.log, 0,
                        lead.duration)
    error = Path(job.spec.result + ".error")
    log = lead.log + (f"\n{error.read_text()}" if error.is_file() else "")
    return Finished(job.task_id, False, None, log, lead.returncode or 1, lead.duration,
                    lead.reason or ("its engine failed in the group's window (log below)"
                                    if error.is_file() else "its group's worker failed"))


def _record(task: Task, d: Decision, fin: Finished, store: Store, repro: str) -> TaskOutcome:
    if not fin.ok or fin.result is None:
        from orchestrator.run.executors.local import describe_exit

        why = fin.reason or (describe_exit(fin.returncode) if fin.returncode != 0
                             else "worker wrote no result")
        summary = f"{task.label} failed ({why}) after {fin.duration:.1f}s"
        tail = fin.log_tail()
        msg = f"{summary}\n--- log tail ---\n{tail}\n--- reproduce alone: {repro}"
        return TaskOutcome("fail", d.key, None, fin.duration, d.reasons, msg, summary, tail, repro)
    assert d.key is not None and d.doc is not None
    log_blob = store.put_bytes(fin.log.encode())
    entry = ActionEntry(fin.result["outputs"], fin.result["metrics"], fin.result["warnings"],
                        log_blob.digest, d.doc)
    store.put_action(d.key, entry.to_json())
    for recipe, target, pos in task.labels:
        store.set_meta(index_keys.last_document(recipe, target, pos), d.doc)
    return TaskOutcome("run", d.key, entry, fin.duration, d.reasons)


def remember_hits(plan: Plan, outcomes: dict[str, TaskOutcome], store: Store) -> None:
    """Record the key document of every hit under each of its labels, so later reasons compare
    against what this build used."""
    for tid, o in outcomes.items():
        if o.status == "hit" and o.entry is not None:
            task = plan.graph.task(tid)
            for recipe, target, pos in task.labels:
                k = index_keys.last_document(recipe, target, pos)
                if store.get_meta(k) != o.entry.doc:
                    store.set_meta(k, o.entry.doc)
