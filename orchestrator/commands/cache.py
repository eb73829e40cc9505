"""`deploy-build cache verify`: re-hash every blob and tree of the local cache.

A build trusts a blob whose (inode, size, mtime, ctime) has not changed since it was last hashed;
rot that changes no metadata at all (a failing disk, a flipped bit in place) is found only by
reading the bytes again, which is what this command does. Corrupt blobs (and links, folders or
other non-files where a blob should be) are removed, and so is every action entry that names a
removed or missing blob, or is malformed: the next build rebuilds those tasks.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any

from orchestrator.errors import EXIT_BUILD_FAILED, EXIT_OK, FatalError
from orchestrator.hashing import NotRegularFile, file_kind, sha256_file
from orchestrator.store import index as index_keys
from orchestrator.store.base import Blob, InvalidEntry
from orchestrator.store.local import LocalStore

_DIGEST_TAIL = re.compile(r"[0-9a-f]{62}")


def default_cache(args: argparse.Namespace) -> Path:
    from orchestrator.commands.build import project_root

    return Path(args.cache or os.environ.get("DEPLOY_BUILD_CACHE") or project_root(Path.cwd()) / "cache")


def verify(args: argparse.Namespace) -> int:
    from orchestrator.commands.build import open_store

    cache = default_cache(args)
    if not (cache / "index").is_dir() and not (cache / "cas").is_dir():
        raise FatalError(f"no cache at {cache}; give one with --cache or DEPLOY_BUILD_CACHE")
    store = open_store(cache)
    try:
        report = verify_store(store)
    finally:
        store.close()
    for line in report["problems"]:
        print(f"  {line}", file=sys.stderr)
    bad = report["blobs_removed"] + report["entries_removed"]
    print(f"cache verify: {report['blobs']} blobs ({report['bytes'] / 2**20:.1f} MiB) re-hashed, "
          f"{report['trees']} trees, {report['entries']} action entries; "
          f"{report['blobs_removed']} corrupt blob(s) removed, "
          f"{report['entries_removed']} action entr{'y' if report['entries_removed'] == 1 else 'ies'} "
          f"removed{' (rebuilt by the next build)' if bad else ''}")
    return EXIT_BUILD_FAILED if bad else EXIT_OK


def verify_store(store: LocalStore) -> dict[str, Any]:
    """Re-hash every blob (ignoring the stat cache), then check every action entry against what
    is left. Returns counts and one line per problem."""
    from orchestrator.plan import entry_problem

    problems: list[str] = []
    blobs = size = removed = 0
    cas = store.cas
    shards = sorted(os.scandir(cas), key=lambda e: e.name) if cas.is_dir() else []
    for shard in shards:
        if not shard.is_dir(follow_symlinks=False):
            problems.append(f"{shard.path}: a {file_kind(shard.stat(follow_symlinks=False).st_mode)} "
                            "where a shard folder should be (removed)")
            store._discard(Path(shard.path))
            removed += 1
            continue
        for f in sorted(os.scandir(shard.path), key=lambda e: e.name):
            if f.name.startswith("."):
                continue  # a temp file (the sweep removes stale ones)
            path = Path(f.path)
            digest = shard.name + f.name
            if len(shard.name) != 2 or not _DIGEST_TAIL.fullmatch(f.name):
                problems.append(f"{path}: not a blob name (left alone)")
                continue
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                problems.append(f"blob {digest[:12]}: a {file_kind(st.st_mode)}, not a file (removed)")
                store._discard(path)
                removed += 1
                continue
            try:
                ok = sha256_file(path, follow=False) == digest
            except (FileNotFoundError, NotRegularFile):
                continue  # removed or replaced meanwhile: the entries check below sees it
            blobs += 1
            size += st.st_size
            if ok:
                store._remember(path, digest)
            else:
                problems.append(f"blob {digest[:12]}: corrupt, its bytes no longer match (removed)")
                store._discard(path)
                removed += 1
    entries = entries_removed = trees = 0
    keys = [k for k in store.index.iterkeys()
            if isinstance(k, str) and k.startswith(index_keys.ACTION)]
    for k in keys:
        entries += 1
        key = k.removeprefix(index_keys.ACTION)
        why: str | None
        try:
            entry = store.get_action(key)
            why = entry_problem(entry) if entry is not None else None
        except InvalidEntry as e:
            entry, why = None, str(e)
        if entry is not None and why is None:
            for name, b in sorted(entry["outputs"].items()):
                blob = Blob.from_json(b)
                trees += blob.kind == "tree"
                problem = store.check(blob)
                if problem:
                    why = f"output {name!r} {problem}"
                    break
        if why:
            problems.append(f"action entry {key[:12]}: {why} (removed)")
            store.delete_action(key)
            entries_removed += 1
    return {"blobs": blobs, "bytes": size, "trees": trees, "entries": entries,
            "blobs_removed": removed, "entries_removed": entries_removed, "problems": problems}
