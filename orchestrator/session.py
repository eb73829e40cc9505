"""What every command that builds or inspects recipes opens: the recipes, the store (local, and
the remote over it), the graph, this machine's fit and the plan (`open_session`), and the checks
made before anything runs. The commands are thin over it: arguments -> session -> a library
call -> print."""

from __future__ import annotations

import argparse
import os
import sqlite3
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import FatalError
from orchestrator.hashing import file_kind
from orchestrator.plan import Plan, make_plan, prefetch_remote, resolve_sources
from orchestrator.plan.fit import Fit, fit_graph
from orchestrator.plan.graph import BuildGraph, compile_graph
from orchestrator.plan.sources import StatCache
from orchestrator.recipe import Recipe, _did_you_mean, load_recipe
from orchestrator.registry import Registry
from orchestrator.store.config import attach_remote
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
    from orchestrator.run.executors import cuda_device_ids

    return len(cuda_device_ids())


def open_session(args: argparse.Namespace, force: bool = False, rebench: bool = False) -> Session:
    # one registry per recipe: two recipes may bring different plugins with the same step name
    from orchestrator.recipe.selection import expand_recipes, expand_targets

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
    from orchestrator.host.machine import detect

    fit = fit_graph(graph, detect(), _cluster_view(args))
    plan = make_plan(graph, store, sources, force=force, rebench=rebench,
                     cuda_devices=cuda_devices(), skips=fit.tasks)
    return Session(recipes, store, out, graph, plan, fit)


def _cluster_view(args: argparse.Namespace) -> Any:
    """With --executor ray, targets are judged by the cluster's nodes, not by this machine."""
    if getattr(args, "executor", "local") != "ray":
        return None
    from orchestrator.run.executors import make_executor

    ray: Any = make_executor("ray", 1, getattr(args, "ray_address", None))
    return ray.unmet


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
    from orchestrator.host.diskerrors import SQLITE_DAMAGED, describe, nearest_existing, probe_write
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
    from orchestrator.host.diskerrors import describe, nearest_existing, probe_write

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
