"""How a target folder changes: built beside the old one and swapped in with one atomic exchange,
with SIGINT/SIGTERM held until the swap is done, so the manifest always describes the bytes next
to it (what a manifest says is orchestrator/targets/manifest.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from orchestrator.host.procs import alive
from orchestrator.host.signals import signals_held
from orchestrator.plan.graph import BuildGraph, TargetPlan
from orchestrator.store.base import Blob
from orchestrator.store.local import LocalStore
from orchestrator.targets.manifest import MANIFEST, RUN_LOG, dumps, placed


def write_target(out_root: Path, tp: TargetPlan, manifest: dict[str, Any], store: LocalStore,
                 outcomes: dict[str, Any], graph: BuildGraph) -> Path:
    """Materialize the target's artifacts (hard links into the cache) and its manifest.

    The folder changes as a whole or not at all: the new version is built beside it and swapped
    in with one atomic exchange (renameat2), with SIGINT/SIGTERM held until the swap is done, so
    the manifest always describes the bytes next to it. A folder that already holds exactly this
    manifest and these artifacts is left alone (a no-op build rewrites nothing but the run log).
    """
    tdir = out_root / tp.recipe.name / tp.name
    tdir.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(manifest)
    run_log = dumps({
        "host": os.uname().nodename,
        "tasks": [
            {"label": graph.task(t).label, "status": outcomes[t].status,
             "duration_s": round(outcomes[t].duration, 3), "key": outcomes[t].key}
            for t in tp.task_ids() if t in outcomes
        ],
    })
    _sweep_staging(tdir)
    if not in_place(tdir, manifest, text, store):
        staging = tdir.with_name(f".{tdir.name}.new-{os.getpid()}")
        _remove_tree(staging)
        staging.mkdir()
        try:
            for a in placed(manifest):
                store.materialize(Blob(a["kind"], a["digest"], a["size"]), staging / a["path"])
            (staging / MANIFEST).write_text(text)
            (staging / RUN_LOG).write_text(run_log)
            with signals_held():
                swap_in(staging, tdir)
        finally:  # after the exchange it holds the previous version; a second Ctrl-C waits
            with signals_held():
                _remove_tree(staging)
        for a in placed(manifest):  # copies (cache on another file system) moved with it
            files = ({a["path"]: a["digest"]} if a["kind"] == "file" else
                     {f"{a['path']}/{rel}": d for rel, (d, _) in store.tree_files(a["digest"]).items()})
            for rel, digest in files.items():
                store.remember_placed(digest, tdir / rel)
        return tdir / MANIFEST
    tmp_log = tdir / f".{RUN_LOG}.{os.getpid()}.tmp"
    tmp_log.write_text(run_log)
    os.replace(tmp_log, tdir / RUN_LOG)
    return tdir / MANIFEST


def in_place(tdir: Path, manifest: dict[str, Any], text: str, store: LocalStore) -> bool:
    """True when tdir holds exactly this manifest and these artifacts (linked to their blobs)."""
    try:
        if (tdir / MANIFEST).read_text() != text:
            return False
        for a in placed(manifest):
            dest = tdir / a["path"]
            if a["kind"] == "file":
                if not store.is_placed(a["digest"], dest):
                    return False
                continue
            files = store.tree_files(a["digest"])
            present = {p.relative_to(dest).as_posix() for p in dest.rglob("*")
                       if not p.is_dir() or p.is_symlink()}
            if present != set(files) or not all(store.is_placed(d, dest / rel)
                                                 for rel, (d, _) in files.items()):
                return False
    except (OSError, ValueError, KeyError):
        return False
    return True


def swap_in(new: Path, dest: Path) -> None:
    """Put folder ``new`` at ``dest`` in one step; afterwards ``new`` holds what dest held."""
    if not dest.exists() and not dest.is_symlink():
        os.rename(new, dest)
        return
    if _exchange(new, dest):
        return
    # no renameat2 here (an old kernel or file system): two renames; dest is briefly absent,
    # never a mix of two versions
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    _remove_tree(old)
    os.rename(dest, old)
    os.rename(new, dest)
    os.rename(old, new)


def _exchange(a: Path, b: Path) -> bool:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return bool(renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)),
                          rename_exchange) == 0)


def _sweep_staging(tdir: Path) -> None:
    """Remove staging folders of this target left by a build that was killed (-9)."""
    for p in tdir.parent.glob(f".{tdir.name}.*-*"):
        pid = p.name.rpartition("-")[2]
        if pid.isdigit() and p.name.startswith((f".{tdir.name}.new-", f".{tdir.name}.old-")) \
                and not alive(int(pid)):
            _remove_tree(p)


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)
