"""`deploy-build RECIPE` (build, --dry-run) and `deploy-build explain RECIPE`."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import EXIT_BUILD_FAILED, EXIT_OK, FatalError
from orchestrator.plan import Plan
from orchestrator.session import (  # noqa: F401 - what other commands import from here
    Session,
    check_out,
    cuda_devices,
    lock_timeout,
    open_session,
    open_store,
    project_root,
)
from orchestrator.store.config import fetch_for_build
from orchestrator.store.gc import record_use


def _shared(task: Any) -> str:
    targets = sorted({t for _, t, _ in task.labels})
    return f"  [shared by {', '.join(targets)}]" if len(targets) > 1 else ""


def print_plan(plan: Plan, stream: Any = None) -> None:
    stream = stream or sys.stdout
    c = plan.counts()
    n = len(plan.decisions)
    print(f"plan: {n} tasks: {c['HIT']} HIT, {c['RUN']} RUN, {c['SKIP']} SKIP", file=stream)
    for task in plan.graph.tasks():
        d = plan.decisions[task.id]
        why = f"  ({'; '.join(d.reasons)})" if d.reasons else ""
        print(f"  {d.status:<4}  {task.label}{why}{_shared(task)}", file=stream)


def explain(args: argparse.Namespace) -> int:
    s = open_session(args)
    if getattr(args, "json", False):
        out: dict[str, Any] = {}
        for tp in s.graph.targets:
            rows = []
            for tid in tp.task_ids():
                task, d = s.graph.task(tid), s.plan.decisions[tid]
                rows.append({"label": task.label, "step": task.step, "status": d.status.lower(),
                             "key": d.key, "reasons": d.reasons,
                             "shared_by": sorted({t for _, t, _ in task.labels})})
            out[f"{tp.recipe.name}/{tp.name}"] = rows
        print(json.dumps({"targets": out}, indent=2, sort_keys=True))
        s.store.close()
        return EXIT_OK
    pruned = _pruned_by_cached_gates(s)
    for tp in s.graph.targets:
        print(f"{tp.recipe.name}/{tp.name}:")
        ids = tp.task_ids()
        for tid in ids:
            task = s.graph.task(tid)
            d = s.plan.decisions[tid]
            key = d.key[:16] if d.key else "(after upstream)"
            print(f"  {d.status:<4}  {task.label:<36} key {key}{_shared(task)}")
            for r in d.reasons:
                print(f"          - {r}")
            if d.status == "RUN" and tid in pruned:
                print(f"          - but a build skips it: {pruned[tid]}")
    _explain_searches(s)
    s.store.close()
    return EXIT_OK


def _pruned_by_cached_gates(s: Session) -> dict[str, str]:
    """Speed checks a build would skip because their targets' untimed checks, cached, already
    fail their gates (cheap gates first): task id -> why."""
    from orchestrator.run.scheduler import TaskOutcome

    hits = {tid: TaskOutcome("hit", d.key, d.entry) for tid, d in s.plan.decisions.items()
            if d.status == "HIT" and d.entry is not None}
    prune = cheap_gates_first(s)
    out: dict[str, str] = {}
    for task in s.graph.tasks():
        if task.info.cls.measures_speed and s.plan.decisions[task.id].status == "RUN":
            why = prune(task, hits)
            if why is not None:
                out[task.id] = why
    return out


def _explain_searches(s: Session) -> None:
    """Per search target: its variants, and the last choice made here and why."""
    for recipe in s.recipes:
        for name, plan in recipe.searches.items():
            print(f"{recipe.name}/{name}: search over {len(plan.candidates)} variants "
                  f"({', '.join(sorted(c.split('~', 1)[1] for c in plan.candidates))})")
            try:
                last = json.loads((s.out / recipe.name / name / "manifest.json").read_text())
            except (OSError, ValueError):
                print("  not chosen here yet")
                continue
            section = last.get("search") or {}
            print(f"  last chosen: {section.get('winner')} ({section.get('why')})")


def run(args: argparse.Namespace) -> int:
    """`deploy-build RECIPE`: plan, then print the plan (--dry-run) or build, judge and sum up."""
    if args.jobs < 1:
        raise FatalError(f"--jobs must be at least 1, got {args.jobs}")
    lock_timeout(args)  # a bad value is a user error before anything runs
    if getattr(args, "in_process", False):
        return in_process(args)
    s = open_session(args, force=args.force, rebench=args.rebench)
    if args.dry_run:
        return dry_run(args, s)
    try:
        check_out(s.out, s)
    except FatalError:
        s.store.close()
        raise
    if fetch_for_build(s.store, s.plan):  # a remote blob was lost or refused: those are misses
        s.plan = s.plan.replan(s.store)
    done = build_and_judge(args, s)
    if isinstance(done, int):
        return done
    return summary(args, s, done)


def dry_run(args: argparse.Namespace, s: Session) -> int:
    """Print the plan (--json: as JSON) and build nothing."""
    if args.json:
        print(json.dumps({"tasks": [
            {"id": t.id, "label": t.label, "step": t.step,
             "status": s.plan.decisions[t.id].status.lower(),
             "key": s.plan.decisions[t.id].key, "reasons": s.plan.decisions[t.id].reasons,
             "targets": sorted({f"{r}/{tg}" for r, tg, _ in t.labels})}
            for t in s.graph.tasks()]}, indent=2, sort_keys=True))
    else:
        print_plan(s.plan)
    s.store.close()
    return EXIT_OK


@dataclass(frozen=True)
class Judged:
    """What a finished build leaves for its summary."""

    outcomes: dict[str, Any]  # task id -> scheduler.TaskOutcome
    failed: bool
    targets: dict[str, Any]  # "recipe/target" -> status and manifest path
    table: list[Any]  # rows of the summary table


def build_and_judge(args: argparse.Namespace, s: Session) -> Judged | int:
    """Run the plan, then judge and write the targets; an exit code when a signal stopped it.
    SIGTERM is handled like Ctrl-C meanwhile; the store is closed either way."""
    from orchestrator.errors import Terminated, raise_terminated
    from orchestrator.run.progress import LiveReporter, PlainReporter
    from orchestrator.run.scheduler import Interrupted, Options, execute, remember_hits

    live = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
    reporter = LiveReporter(sys.stderr, len(s.plan.decisions)) if live else PlainReporter(sys.stderr)
    repro = {t.id: _repro(args, t.label) for t in s.graph.tasks()}
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        try:
            opts = Options(args.jobs, args.fail_fast, args.executor, args.ray_address,
                           lock_timeout(args))
            outcomes = execute(s.plan, s.store, opts, reporter, repro, cheap_gates_first(s))
        except Interrupted as e:
            reporter.close()
            print("interrupted: running tasks stopped; finished tasks are cached", file=sys.stderr)
            return e.code
        reporter.close()
        remember_hits(s.plan, outcomes, s.store)
        record_use(s.store, s.graph, outcomes)
        try:
            from orchestrator.targets.judge import judge

            return Judged(outcomes, *judge(args, s, outcomes))
        except KeyboardInterrupt as e:  # each target folder is whole: the new or the old version
            print("interrupted while writing targets: each target folder holds either its new or "
                  "its previous version, with the manifest that describes it", file=sys.stderr)
            return 143 if isinstance(e, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        s.store.close()


def cheap_gates_first(s: Session) -> Any:
    """The scheduler's prune rule: a speed check is not run when every target using it has
    already failed an untimed check (its manifest says ``not measured: parity failed (...)``)."""
    import time

    from orchestrator.targets.manifest import cheap_failure

    targets = {(tp.recipe.name, tp.name): tp for tp in s.graph.targets}
    started: dict[tuple[str, str], float] = {}  # search -> when its first speed check was asked

    def over_budget(task: Any) -> str | None:
        """A search's budget_s: speed checks of its variants asked for after it is spent."""
        budgets = []
        for recipe, target, _ in task.labels:
            tp = targets.get((recipe, target))
            plan = tp.recipe.searches.get(tp.search) if tp is not None and tp.search else None
            if plan is None or plan.spec.budget_s is None:
                return None
            t0 = started.setdefault((recipe, plan.target), time.monotonic())
            if time.monotonic() - t0 <= plan.spec.budget_s:
                return None
            budgets.append(plan.spec.budget_s)
        return f"not measured: the search's budget of {budgets[0]:g} s is spent" if budgets else None

    def prune(task: Any, outcomes: dict[str, Any]) -> str | None:
        budget = over_budget(task)
        if budget is not None:
            return budget
        whys = []
        for recipe, target, _ in task.labels:
            tp = targets.get((recipe, target))
            why = cheap_failure(tp, s.graph, outcomes) if tp is not None else None
            if why is None:
                return None
            whys.append(why)
        return f"not measured: {whys[0]}" if whys else None

    return prune


def summary(args: argparse.Namespace, s: Session, j: Judged) -> int:
    """The table and counts (stderr), what runs after a build, --json's summary; the exit code."""
    print_summary(args, j.outcomes, j.targets, j.table)
    from orchestrator.review.publish import after_build

    after_build(args, s, j.outcomes, j.table)
    if args.json:
        out = {
            "status": "failed" if j.failed else "ok",
            "tasks": [_task_json(t, j.outcomes[t.id]) for t in s.graph.tasks()],
            "targets": j.targets,
        }
        print(json.dumps(out, indent=2, sort_keys=True))
    if j.failed:
        return EXIT_BUILD_FAILED
    from orchestrator.targets.skipped import require_all

    return require_all(args, j.targets)


def in_process(args: argparse.Namespace) -> int:
    """`--only T/POS --in-process`: that one task in the foreground (orchestrator.testing)."""
    if not args.only or args.dry_run:
        raise FatalError("--in-process runs one task: give it with --only TARGET/POSITION "
                         "(and without --dry-run)")
    from orchestrator.testing import run_task_in_process

    s = open_session(args)
    try:
        return run_task_in_process(s, args.only, args.jobs, lock_timeout(args))
    finally:
        s.store.close()


def print_summary(args: argparse.Namespace, outcomes: dict[str, Any], targets: dict[str, Any],
                  table: list[Any]) -> None:
    """The table of targets and the closing counts line (stderr)."""
    if table and not getattr(args, "only", None):
        from orchestrator.targets.summary import render

        print("\n" + render(table) + "\n", file=sys.stderr)
    counts = {k: sum(1 for o in outcomes.values() if o.status == k)
              for k in ("hit", "run", "skip", "fail")}
    print(f"{len(outcomes)} tasks: {counts['hit']} hit, {counts['run']} run, {counts['skip']} skipped, "
          f"{counts['fail']} failed; {sum(1 for t in targets.values() if t['status'] == 'ok')}/"
          f"{len(targets)} targets ok", file=sys.stderr)


def _task_json(task: Any, o: Any) -> dict[str, Any]:
    out = {"id": task.id, "label": task.label, "step": task.step, "key": o.key,
           "status": o.status, "duration_s": round(o.duration, 3), "reasons": o.reasons}
    if o.status == "fail":
        out.update(error=o.summary or o.error, log_tail=o.log_tail, reproduce=o.reproduce)
    return out


def _repro(args: argparse.Namespace, label: str) -> str:
    parts = ["deploy-build", *args.recipes, "--only", label, "--jobs", "1"]
    if args.cache:
        parts += ["--cache", args.cache]
    if args.out:
        parts += ["--out", args.out]
    return shlex.join(parts)
