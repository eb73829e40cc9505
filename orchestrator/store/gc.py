"""What the cache holds, how it is used, and collecting what is not needed any more.

Each build records, in the local index, when it last used each action key (``used:<key>``, a hit
or a run) and per step how many tasks were hits and runs (``stats:steps``): `cache stats` and
`cache gc` read them. Volatile by nature, they live in the index, never in a manifest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.store import index as index_keys
from orchestrator.store.base import BlobError, InvalidEntry
from orchestrator.store.local import LocalStore

STATS_KEY = index_keys.STATS
USED = index_keys.USED
GRACE_S = 3600  # a blob younger than this may belong to a task whose entry is not written yet
_KEY = re.compile(r"[0-9a-f]{64}")


def record_use(store: LocalStore, graph: Any, outcomes: dict[str, Any]) -> None:
    """After a build: per step hit/run counts (remote hits counted apart) and last use per key."""
    now = int(time.time())
    counts: dict[str, dict[str, int]] = dict(store.get_meta(STATS_KEY) or {})
    fetched = getattr(store, "fetched", {})
    mark = getattr(store, "mark_used", None)
    with store.index.transact():  # one write to the index, not one per task
        _record(store, graph, outcomes, counts, fetched, mark, now)


def _record(store: LocalStore, graph: Any, outcomes: dict[str, Any],
            counts: dict[str, dict[str, int]], fetched: Any, mark: Any, now: int) -> None:
    for tid, o in sorted(outcomes.items()):
        if o.status not in ("hit", "run") or not o.key:
            continue
        if mark is not None and o.entry is not None:
            mark(o.key, o.entry.to_json())
        c = counts.setdefault(graph.task(tid).step, {"hit": 0, "run": 0, "remote_hit": 0})
        c[o.status] = c.get(o.status, 0) + 1
        if o.status == "hit" and o.key in fetched:
            c["remote_hit"] = c.get("remote_hit", 0) + 1
        store.set_meta(USED + o.key, now)
    store.set_meta(STATS_KEY, counts)


def local_entries(store: LocalStore) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """(key, entry) of every local action entry; entry None when it cannot be decoded."""
    keys = sorted(k.removeprefix(index_keys.ACTION) for k in store.index.iterkeys()
                  if isinstance(k, str) and k.startswith(index_keys.ACTION))
    for key in keys:
        try:
            yield key, LocalStore.get_action(store, key)
        except InvalidEntry:
            yield key, None


def entry_blobs(store: LocalStore, entry: dict[str, Any]) -> set[str]:
    """Every digest an entry needs: its outputs (a tree: its listing and files) and its log."""
    out: set[str] = set()
    with contextlib.suppress(AttributeError, KeyError, TypeError):
        for b in entry["outputs"].values():
            out.add(b["digest"])
            if b["kind"] == "tree":
                with contextlib.suppress(BlobError):
                    out |= {d for d, _ in LocalStore.tree_files(store, b["digest"]).values()}
    if isinstance(entry.get("log"), str):
        out.add(entry["log"])
    return out


def entry_step(entry: dict[str, Any] | None) -> str:
    doc = entry.get("doc") if entry else None
    return str(doc.get("step", "?")) if isinstance(doc, dict) else "?"


def entry_size(entry: dict[str, Any] | None) -> int:
    with contextlib.suppress(AttributeError, KeyError, TypeError, ValueError):
        outputs: dict[str, Any] = entry["outputs"]  # type: ignore[index]
        return sum(int(b["size"]) for b in outputs.values())
    return 0


def manifest_keys(paths: Iterable[Path]) -> set[str]:
    """Action keys named by manifests and run logs (files, or folders searched for them)."""
    files: list[Path] = []
    for p in paths:
        files += sorted([*p.rglob("manifest.json"), *p.rglob("run-log.json")]) if p.is_dir() else [p]
    keys: set[str] = set()
    for f in files:
        try:
            _collect_keys(json.loads(f.read_text()), keys)
        except (OSError, ValueError) as e:
            from orchestrator.errors import FatalError

            raise FatalError(f"cannot read the manifest {f} given with --keep: {e}") from None
    return keys


def _collect_keys(value: Any, into: set[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "key" and isinstance(v, str) and _KEY.fullmatch(v):
                into.add(v)
            else:
                _collect_keys(v, into)
    elif isinstance(value, list):
        for v in value:
            _collect_keys(v, into)


@dataclass
class GcReport:
    entries_removed: int = 0
    blobs_removed: int = 0
    bytes_freed: int = 0
    bytes_left: int = 0
    kept_by_manifest: int = 0
    lines: list[str] = field(default_factory=list)


def collect(store: LocalStore, max_bytes: int | None, max_age_s: float | None,
            keep: set[str], now: float | None = None) -> GcReport:
    """Remove action entries unused for max_age_s, then the least recently used ones until the
    blobs still needed fit in max_bytes; never an entry a kept manifest names. Then remove every
    blob no entry needs (except young ones: a running build may be about to name them)."""
    now = time.time() if now is None else now
    report = GcReport()
    entries = dict(local_entries(store))
    used = {k: float(store.get_meta(USED + k) or 0) for k in entries}
    drop = {k for k, e in entries.items() if e is None and k not in keep}
    if max_age_s is not None:
        drop |= {k for k in entries if k not in keep and now - used[k] > max_age_s}
    needs = {k: entry_blobs(store, e) for k, e in entries.items() if e is not None and k not in drop}
    sizes = _blob_sizes(store)
    if max_bytes is not None:
        fit_quota(needs, sizes, used, keep, drop, max_bytes)
    for k in sorted(drop):
        store.delete_action(k)
        with contextlib.suppress(KeyError):
            store.index.delete(USED + k)
    report.entries_removed = len(drop)
    report.kept_by_manifest = len(keep & set(entries))
    _remove_blobs(store, sizes, set().union(*needs.values()) if needs else set(), now, report)
    return report


def fit_quota(needs: dict[str, set[str]], blobs: dict[str, int], used: dict[str, float],
         keep: set[str], drop: set[str], max_bytes: int) -> None:
    """Drop the least recently used entries (never a kept one) until the blobs still needed fit
    max_bytes; ``needs`` loses the dropped entries. Shared by the local and the remote gc."""
    refs: dict[str, int] = {}
    for digests in needs.values():
        for d in digests:
            refs[d] = refs.get(d, 0) + 1
    live = sum(blobs.get(d, 0) for d in refs)
    for k in sorted((k for k in needs if k not in keep), key=lambda k: (used[k], k)):
        if live <= max_bytes:
            break
        drop.add(k)
        for d in needs.pop(k):
            refs[d] -= 1
            if refs[d] == 0:
                live -= blobs.get(d, 0)
                del refs[d]


def _blob_sizes(store: LocalStore) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(FileNotFoundError):
        for shard in os.scandir(store.cas):
            if not shard.is_dir(follow_symlinks=False) or len(shard.name) != 2:
                continue
            for f in os.scandir(shard.path):
                if not f.name.startswith("."):
                    with contextlib.suppress(OSError):
                        out[shard.name + f.name] = f.stat(follow_symlinks=False).st_size
    return out


def _remove_blobs(store: LocalStore, sizes: dict[str, int], needed: set[str], now: float,
                  report: GcReport) -> None:
    for digest, size in sorted(sizes.items()):
        if digest in needed:
            report.bytes_left += size
            continue
        path = store.blob_path(digest)
        try:
            if now - os.lstat(path).st_mtime < GRACE_S:
                report.bytes_left += size
                continue
            os.unlink(path)
        except OSError:
            continue
        with contextlib.suppress(KeyError):
            store.index.delete("v:" + digest)
        report.blobs_removed += 1
        report.bytes_freed += size
