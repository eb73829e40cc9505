"""`deploy-build cache ls|stats|gc|verify|push|pull`.

`verify` re-hashes every blob and tree of the local cache (and, with a remote, of the remote).

A build trusts a blob whose (inode, size, mtime, ctime) has not changed since it was last hashed;
rot that changes no metadata at all (a failing disk, a flipped bit in place) is found only by
reading the bytes again, which is what this command does. Corrupt blobs (and links, folders or
other non-files where a blob should be) are removed, and so is every action entry that names a
removed or missing blob, or is malformed: the next build rebuilds those tasks.
"""

from __future__ import annotations

import argparse
import json
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
    from orchestrator.session import project_root

    return Path(args.cache or os.environ.get("DEPLOY_BUILD_CACHE") or project_root(Path.cwd()) / "cache")


def verify(args: argparse.Namespace) -> int:
    from orchestrator.session import open_store

    cache = default_cache(args)
    if not (cache / "index").is_dir() and not (cache / "cas").is_dir():
        raise FatalError(f"no cache at {cache}; give one with --cache or DEPLOY_BUILD_CACHE")
    store = open_store(cache)
    try:
        report = verify_store(store)
    finally:
        store.close()
    code = _print_verify(report)
    return max(code, _verify_remote(args, cache))


def _print_verify(report: dict[str, Any]) -> int:
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
    problems: list[str] = []
    blobs = _verify_blobs(store, problems)
    entries = _verify_entries(store, problems)
    return {**blobs, **entries, "problems": problems}


def _verify_blobs(store: LocalStore, problems: list[str]) -> dict[str, int]:
    """Re-hash every blob in cas/; what is not a good blob is removed (a foreign name is left)."""
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
    return {"blobs": blobs, "bytes": size, "blobs_removed": removed}


def _verify_entries(store: LocalStore, problems: list[str]) -> dict[str, int]:
    """Check every action entry and the blobs it names; a bad entry is removed (rebuilt later)."""
    from orchestrator.store.base import entry_problem

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
    return {"trees": trees, "entries": entries, "entries_removed": entries_removed}


# ---- the remote, ls, stats, gc, push, pull ----------------------------------------------------
def _remote(args: argparse.Namespace, cache: Path, required: bool = False) -> Any:
    """A TieredStore over the local cache when a remote is set (flag or environment), else None."""
    from orchestrator.store.config import remote_settings

    url, mode, where = remote_settings(args)
    if not url:
        if required:
            raise FatalError("no remote cache: give one with --remote-cache URL or "
                             "DEPLOY_BUILD_REMOTE_CACHE")
        return None
    from orchestrator.store.transfer import open_for

    return open_for(cache, url, mode, where)


def _verify_remote(args: argparse.Namespace, cache: Path) -> int:
    store = _remote(args, cache)
    if store is None:
        return EXIT_OK
    from orchestrator.store.transfer import verify_remote

    try:
        report = verify_remote(store)
    finally:
        store.close()
    for line in report["problems"]:
        print(f"  {line}", file=sys.stderr)
    removed = "removed" if store.remote.can_write else "left (read-only mode)"
    print(f"cache verify: remote {store.remote.url}: {report['blobs']} blobs "
          f"({report['bytes'] / 2**20:.1f} MiB) re-hashed, {report['entries']} action entries; "
          f"{report['bad']} bad {removed}", file=sys.stderr)
    return EXIT_BUILD_FAILED if report["bad"] or store.remote.disabled else EXIT_OK


def _open_local(args: argparse.Namespace) -> LocalStore:
    from orchestrator.session import open_store

    return open_store(default_cache(args))


def ls(args: argparse.Namespace) -> int:
    from orchestrator.store.gc import USED, entry_size, entry_step, local_entries

    store = _open_local(args)
    try:
        rows: list[dict[str, Any]] = [{"key": k, "step": entry_step(e), "bytes": entry_size(e),
                 "outputs": sorted((e or {}).get("outputs", {})),
                 "last_used": int(store.get_meta(USED + k) or 0)} for k, e in local_entries(store)]
    finally:
        store.close()
    remote = _remote(args, default_cache(args))
    if remote is not None:
        there = set(remote.remote.list_entries())
        remote.close()
        for r in rows:
            r["remote"] = r["key"] in there
        rows += [{"key": k, "step": "?", "bytes": 0, "outputs": [], "last_used": 0, "remote": True,
                  "remote_only": True} for k in sorted(there - {r["key"] for r in rows})]
    if args.json:
        print(json.dumps({"entries": rows}, indent=2, sort_keys=True))
        return EXIT_OK
    for r in rows:
        where = "remote only" if r.get("remote_only") else ("local+remote" if r.get("remote") else "local")
        print(f"{r['key'][:16]}  {r['step']:<20} {_mib(r['bytes']):>10}  {','.join(r['outputs']):<16} "
              f"{where}")
    print(f"{len(rows)} action entries", file=sys.stderr)
    return EXIT_OK


def stats(args: argparse.Namespace) -> int:
    from orchestrator.store.gc import STATS_KEY, entry_size, entry_step, local_entries

    store = _open_local(args)
    try:
        counts: dict[str, dict[str, int]] = dict(store.get_meta(STATS_KEY) or {})
        by_step: dict[str, list[int]] = {}
        for _, e in local_entries(store):
            sums = by_step.setdefault(entry_step(e), [0, 0])
            sums[0] += 1
            sums[1] += entry_size(e)
    finally:
        store.close()
    steps = sorted(set(counts) | set(by_step))
    table: dict[str, dict[str, Any]] = {s: {**{"hit": 0, "run": 0, "remote_hit": 0}, **counts.get(s, {}),
                 "entries": by_step.get(s, [0, 0])[0], "bytes": by_step.get(s, [0, 0])[1]}
             for s in steps}
    for row in table.values():
        used = row["hit"] + row["run"]
        row["hit_rate"] = round(row["hit"] / used, 4) if used else None
    if args.json:
        print(json.dumps({"steps": table}, indent=2, sort_keys=True))
        return EXIT_OK
    print(f"{'step':<22} {'hits':>6} {'(remote)':>8} {'runs':>6} {'hit rate':>8} {'entries':>7} "
          f"{'bytes':>10}")
    for s, row in table.items():
        rate = "-" if row["hit_rate"] is None else f"{row['hit_rate']:.0%}"
        print(f"{s:<22} {row['hit']:>6} {row['remote_hit']:>8} {row['run']:>6} {rate:>8} "
              f"{row['entries']:>7} {_mib(row['bytes']):>10}")
    return EXIT_OK


def gc(args: argparse.Namespace) -> int:
    from orchestrator.store.gc import collect, manifest_keys

    max_bytes = _parse_size(args.max_size) if args.max_size else None
    max_age = _parse_age(args.max_age) if args.max_age else None
    if max_bytes is None and max_age is None:
        raise FatalError("cache gc needs --max-size (e.g. 20G) or --max-age (e.g. 30d), or both")
    keep = manifest_keys(Path(p) for p in args.keep)
    store = _open_local(args)
    try:
        report = collect(store, max_bytes, max_age, keep)
    finally:
        store.close()
    _print_gc("cache gc", report)
    if not args.remote_cache:
        return EXIT_OK
    from orchestrator.store.config import open_remote
    from orchestrator.store.remote_gc import collect_remote

    remote = open_remote(args.remote_cache, "readwrite")
    report = collect_remote(remote, max_bytes, max_age, keep)
    _print_gc(f"cache gc: remote {remote.url}", report)
    return EXIT_BUILD_FAILED if remote.disabled else EXIT_OK


def _print_gc(what: str, report: Any) -> None:
    print(f"{what}: {report.entries_removed} action entries and {report.blobs_removed} blobs "
          f"removed ({_mib(report.bytes_freed)} freed, {_mib(report.bytes_left)} left; "
          f"{report.kept_by_manifest} entries kept by --keep manifests)", file=sys.stderr)


def push(args: argparse.Namespace) -> int:
    from orchestrator.store.transfer import push as push_all

    n, url, failed = _transfer(args, push_all)
    print(f"cache push: {n['entries']} action entries ({_mib(n['bytes'])} of blobs) uploaded to "
          f"{url}; {n['skipped']} unusable local entries skipped", file=sys.stderr)
    return EXIT_BUILD_FAILED if failed else EXIT_OK


def pull(args: argparse.Namespace) -> int:
    from orchestrator.store.transfer import pull as pull_all

    n, url, failed = _transfer(args, pull_all)
    print(f"cache pull: {n['entries']} action entries ({_mib(n['bytes'])} of blobs, verified) "
          f"from {url}; {n['refused']} refused", file=sys.stderr)
    return EXIT_BUILD_FAILED if failed or n["refused"] else EXIT_OK


def unlock(args: argparse.Namespace) -> int:
    """Break the remote lease on a key (a full key, or a prefix of one as printed in the wait
    message), whoever holds it: for a lease whose build died or that was forged."""
    store = _remote(args, default_cache(args), required=True)
    try:
        remote = store.remote
        keys = [args.key] if len(args.key) == 64 else sorted(
            k for k in remote.lease_keys() if k.startswith(args.key))
        if not keys:
            print(f"cache unlock: no lease on a key starting {args.key!r} in {remote.url}",
                  file=sys.stderr)
            return EXIT_BUILD_FAILED
        if len(keys) > 1:
            raise FatalError(f"{args.key!r} is the start of {len(keys)} leased keys "
                             f"({', '.join(k[:16] for k in keys[:4])}...); give more of it")
        from orchestrator.store.remote import lease_holder

        held = remote.break_lease(keys[0])
        who = lease_holder(held).describe() if held else "nobody (it was gone already)"
        print(f"cache unlock: removed the lease on {keys[0][:16]} held by {who}", file=sys.stderr)
        return EXIT_OK
    finally:
        store.close()


def _transfer(args: argparse.Namespace, move: Any) -> tuple[dict[str, int], str, bool]:
    """Run push or pull over the tiered store: its counts, the remote's URL, whether the remote
    failed meanwhile."""
    store = _remote(args, default_cache(args), required=True)
    try:
        n: dict[str, int] = move(store)
    finally:
        store.close()
    return n, store.remote.url, bool(store.remote.disabled)


_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_AGES = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise FatalError(f"--max-size {text!r} is not a size; give e.g. 500M, 20G or 1T")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _parse_age(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if not m:
        raise FatalError(f"--max-age {text!r} is not an age; give e.g. 12h, 30d or 2w")
    return float(m.group(1)) * _AGES[m.group(2) or "d"]


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
