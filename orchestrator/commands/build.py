"""`deploy-build RECIPE` (build, --dry-run) and `deploy-build explain RECIPE`."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sqlite3
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import EXIT_BUILD_FAILED, EXIT_OK, FatalError
from orchestrator.fit import Fit, fit_graph
from orchestrator.graph import BuildGraph, compile_graph
from orchestrator.hashing import file_kind
from orchestrator.plan import Plan, make_plan, resolve_sources
from orchestrator.recipe import Recipe, _did_you_mean, load_recipe
from orchestrator.registry import Registry
from orchestrator.sources import StatCache
from orchestrator.store.config import attach_remote, fetch_for_build, prefetch_remote
from orchestrator.store.gc import record_use
from orchestrator.store.local import LocalStore

MAX_RECIPE_BYTES = 2**20


@dataclass
class Session:
    recipes: list[Recipe]
    store: LocalStore
    out: Path
    graph: BuildGraph
    plan: Plan
    fit: Fit = field(default_factory=Fit)  # what this machine skips, and why


def project_root(start: Path) -> Path:
    for d in [start.resolve(), *start.resolve().parents]:
        if (d / "pyproject.toml").exists() or (d / ".git").exists():
            return d
    return Path.cwd()


def cuda_devices() -> int:
    from orchestrator.executors import cuda_device_ids

    return len(cuda_device_ids())


def open_session(args: argparse.Namespace, force: bool = False, rebench: bool = False) -> Session:
    # one registry per recipe: two recipes may bring different plugins with the same step name
    from orchestrator.selection import expand_recipes, expand_targets

    args.recipes = expand_recipes(args.recipes)
    for p in args.recipes:
        check_recipe_file(Path(p))
    allow = getattr(args, "allow_plugin_path", None) or ()
    recipes = [load_recipe(p, Registry(), allow_plugins=allow) for p in args.recipes]
    names = [r.name for r in recipes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise FatalError(f"two recipes are both named {dupes[0]!r}; give each a unique 'name:'")
    args.targets = expand_targets(args.targets, sorted({t for r in recipes for t in r.model.targets}))
    root = project_root(recipes[0].path.parent)
    cache = Path(args.cache or os.environ.get("DEPLOY_BUILD_CACHE") or root / "cache")
    out = Path(args.out) if args.out else root / "build"
    if out.exists() and not out.is_dir():
        raise FatalError(f"--out {out} is a file; give a folder for the built targets")
    store = attach_remote(open_store(cache), args, recipes)
    graph = compile_graph(recipes, args.targets)
    only = getattr(args, "only", None)
    if only:
        graph = _restrict(graph, only)
    sources = resolve_sources(graph, StatCache(store.index))
    prefetch_remote(store, graph, sources)
    from orchestrator.machine import detect

    fit = fit_graph(graph, detect(), _cluster_view(args))
    plan = make_plan(graph, store, sources, force=force, rebench=rebench,
                     cuda_devices=cuda_devices(), skips=fit.tasks)
    return Session(recipes, store, out, graph, plan, fit)


def _cluster_view(args: argparse.Namespace) -> Any:
    """With --executor ray, targets are judged by the cluster's nodes, not by this machine."""
    if getattr(args, "executor", "local") != "ray":
        return None
    from orchestrator.executors import make_executor

    return make_executor("ray", 1, getattr(args, "ray_address", None)).unmet


def check_recipe_file(path: Path) -> None:
    """Refuse, before reading it, a recipe that is not a regular file or is too large to be one."""
    try:
        st = path.stat()
    except OSError:
        return  # load_recipe says what is wrong (not found, ...)
    if stat.S_ISDIR(st.st_mode):
        return
    if not stat.S_ISREG(st.st_mode):
        raise FatalError(f"recipe {path} is a {file_kind(st.st_mode)}, not a regular file; give a "
                         ".yaml file")
    if st.st_size > MAX_RECIPE_BYTES:
        raise FatalError(f"recipe {path} is {st.st_size} bytes, more than the "
                         f"{MAX_RECIPE_BYTES // 2**20} MiB a recipe may be (a recipe is a few "
                         "hundred lines); is it the right file?")


def open_store(cache: Path) -> LocalStore:
    """Open the local cache, saying precisely what stops it (and never suggesting to delete a
    healthy index); warn once when the index was found empty; sweep what killed builds left."""
    from orchestrator.diskerrors import SQLITE_DAMAGED, describe, nearest_existing, probe_write
    from orchestrator.store.sqlindex import NewerIndex

    store = LocalStore(cache)
    try:
        store.index  # noqa: B018 - opens (and creates) the cache now, to report problems early
    except NewerIndex as e:
        raise FatalError(str(e)) from None
    except OSError as e:
        raise FatalError(f"cannot use the cache folder {cache}: {describe(e)}; or choose another "
                         "with --cache or DEPLOY_BUILD_CACHE") from None
    except sqlite3.DatabaseError as e:
        name = str(getattr(e, "sqlite_errorname", "") or "")
        index = cache / "index"
        if isinstance(e, sqlite3.OperationalError) and name not in SQLITE_DAMAGED:
            folder = nearest_existing(index)
            problem = probe_write(folder) if folder.is_dir() else None
            why = describe(problem) if problem else f"{e} [{name}]"
            raise FatalError(f"cannot open the cache index {index / 'cache.db'}: {why}; the index "
                             "is not known to be damaged: do not delete it") from None
        raise FatalError(f"the cache index {index} is unreadable ({e}); delete that "
                         "folder: blobs are kept, re-verified and reused") from None
    if store.index_reset:
        print(f"warning: {store.index_reset}: it starts empty, so every task runs again (the "
              "blobs are kept and reused where identical)", file=sys.stderr)
    removed, freed = store.sweep()
    if removed:
        print(f"note: removed {removed} stale temp folder(s)/file(s) ({freed / 2**20:.1f} MiB) "
              f"that a stopped build left in {store.tmp}", file=sys.stderr)
    return store


def check_out(out: Path, s: Session) -> None:
    """Fail before building when the targets could not be written: --out below a file, or in a
    folder this process cannot write."""
    from orchestrator.diskerrors import describe, nearest_existing, probe_write

    folders = {out} | {out / tp.recipe.name / tp.name for tp in s.graph.targets}
    synced: set[int] = set()  # file systems whose space was probed (a write made durable)
    for folder in sorted(folders):
        existing = nearest_existing(folder)
        if not existing.is_dir():
            raise FatalError(f"--out {out}: {existing} is a file, not a folder; give a folder for "
                             "the built targets")
        dev = existing.stat().st_dev
        problem = probe_write(existing, sync=dev not in synced)
        synced.add(dev)
        if problem:
            raise FatalError(f"--out {out}: cannot write in {existing}: {describe(problem)}")


def _restrict(graph: BuildGraph, only: str) -> BuildGraph:
    labels = {}
    for tid in graph.dag.nodes:
        for r, t, p in getattr(graph.dag.nodes[tid]["obj"], "labels", []):
            labels[f"{r}/{t}/{p}"] = tid
            if len(graph.recipes) == 1:
                labels[f"{t}/{p}"] = tid
    if only not in labels:
        hint = _did_you_mean(only, labels) or "use TARGET/POSITION as printed by --dry-run"
        raise FatalError(f"no task {only!r} (--only); {hint}")
    keep = graph.dag.ancestors(labels[only]) | {labels[only]}
    return BuildGraph(graph.dag.subgraph(keep), [], graph.recipes)


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
    _explain_searches(s)
    s.store.close()
    return EXIT_OK


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


def lock_timeout(args: argparse.Namespace) -> float | None:
    """--lock-timeout, else $DEPLOY_BUILD_LOCK_TIMEOUT, else None (wait as long as it takes)."""
    value: Any = getattr(args, "lock_timeout", None)
    where = "--lock-timeout"
    if value is None and os.environ.get("DEPLOY_BUILD_LOCK_TIMEOUT"):
        value, where = os.environ["DEPLOY_BUILD_LOCK_TIMEOUT"], "DEPLOY_BUILD_LOCK_TIMEOUT"
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise FatalError(f"{where} must be a positive number of seconds, got {value!r}")
    return seconds


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
    from orchestrator.report import LiveReporter, PlainReporter
    from orchestrator.scheduler import Interrupted, Options, execute, remember_hits

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
            from orchestrator.judge import judge

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

    from orchestrator.manifest import cheap_failure

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
    from orchestrator.publish import after_build

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
    from orchestrator.skipped import require_all

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
        from orchestrator.summary import render

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
