"""Moving whole caches: push local entries to the remote, pull remote ones here, verify the remote.

Each goes by the same rules as a build: blobs before the entry that names them, every download
verified against its digest, entries decoded (and their signature checked) before they are used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from orchestrator.hashing import sha256_file
from orchestrator.store.base import Blob, BlobError, InvalidEntry
from orchestrator.store.entries import decode_entry
from orchestrator.store.gc import local_entries
from orchestrator.store.local import LocalStore
from orchestrator.store.tiered import TieredStore

BATCH = 500  # action entries per batched request
PACK_ENTRIES = 5000  # entries per pack that push leaves


def push(store: TieredStore) -> dict[str, int]:
    """Upload every usable local entry the remote lacks: all their blobs first (one listing per
    shard, concurrent uploads), then the entries (concurrently)."""
    from orchestrator.store.base import entry_problem

    remote = store.remote
    if not remote.can_write:
        return {"entries": 0, "bytes": 0, "skipped": 0}
    there = set(remote.list_entries())
    todo: dict[str, dict[str, Any]] = {}
    skipped = 0
    for key, entry in local_entries(store):
        if key in there:
            continue
        outs = entry.get("outputs") if entry is not None and entry_problem(entry) is None else None
        if not isinstance(outs, dict) or any(LocalStore.check(store, Blob.from_json(b))
                                             for b in outs.values()):
            skipped += 1  # malformed, or its blobs are gone here: nothing a reader could use
            continue
        assert entry is not None
        todo[key] = entry
    before = remote.bytes_out
    files: dict[str, str] = {}
    for entry in todo.values():
        files.update(store.entry_files(entry))
    remote.upload(files)
    done = remote._map(lambda k: remote.put_entry(k, todo[k]), sorted(todo)) if remote.can_write else []
    keys = sorted(todo)
    for i in range(0, len(keys), PACK_ENTRIES):  # what a build would have left: packs of them
        remote.put_pack({k: todo[k] for k in keys[i:i + PACK_ENTRIES]})
    return {"entries": sum(done), "bytes": remote.bytes_out - before, "skipped": skipped}


def pull(store: TieredStore) -> dict[str, int]:
    """Download every remote entry missing here, with its blobs (verified), and keep it."""
    remote = store.remote
    keys = [k for k in remote.list_entries() if LocalStore.get_action(store, k) is None]
    pulled = refused = 0
    before = remote.bytes_in
    for i in range(0, len(keys), BATCH):
        raws = remote.get_entries(keys[i:i + BATCH])
        for key, raw in sorted(raws.items()):
            try:
                entry = decode_entry(key, raw, remote.sign_key)
                for b in entry["outputs"].values():
                    store.ensure(Blob.from_json(b))
            except (InvalidEntry, BlobError, KeyError, TypeError, AttributeError) as e:
                refused += 1
                remote.log(f"  entry {key[:12]}: not pulled ({e})")
                continue
            LocalStore.put_action(store, key, entry)
            pulled += 1
    return {"entries": pulled, "bytes": remote.bytes_in - before, "refused": refused}


def verify_remote(store: TieredStore) -> dict[str, Any]:
    """Re-hash every remote blob, then check every remote entry against what is intact; remove
    what is bad when the remote may be written (else only report it)."""
    remote = store.remote
    blobs = remote.list_blobs()
    scratch = store.scratch("verify-")
    problems: list[str] = []

    def intact(digest: str) -> bool:
        tmp = str(scratch / digest)
        try:
            remote.download(digest, tmp)
            return sha256_file(tmp) == digest
        except FileNotFoundError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    try:
        digests = sorted(blobs)
        ok = dict(zip(digests, remote.guard("verifying blobs", lambda: remote._map(intact, digests),
                                            [True] * len(digests)), strict=True))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    bad = sorted(d for d, good in ok.items() if not good)
    problems += [f"remote blob {d[:12]}: corrupt, its bytes do not match its digest" for d in bad]
    remote.delete([remote.blob_path(d) for d in bad] if remote.can_write else [])
    good = {d for d, g in ok.items() if g}
    keys = remote.list_entries()
    bad_entries = _bad_entries(store, keys, good, problems)
    remote.delete([remote.entry_path(k) for k in bad_entries] if remote.can_write else [])
    return {"blobs": len(blobs), "bytes": sum(blobs.values()), "entries": len(keys),
            "blobs_removed": len(bad) if remote.can_write else 0,
            "entries_removed": len(bad_entries) if remote.can_write else 0,
            "bad": len(bad) + len(bad_entries), "problems": problems}


def _bad_entries(store: TieredStore, keys: list[str], good: set[str],
                 problems: list[str]) -> list[str]:
    from orchestrator.store.base import entry_problem

    remote = store.remote
    bad: list[str] = []
    for i in range(0, len(keys), BATCH):
        raws = remote.get_entries(keys[i:i + BATCH])
        for key in keys[i:i + BATCH]:
            why: str | None = None
            try:
                entry = decode_entry(key, raws[key], remote.sign_key) if key in raws else None
                why = "vanished meanwhile" if entry is None else entry_problem(entry)
                for name, b in sorted((entry or {}).get("outputs", {}).items()) if not why else []:
                    why = why or _blob_problem(store, Blob.from_json(b), good, name)
            except InvalidEntry as e:
                why = str(e)
            if why:
                problems.append(f"remote action entry {key[:12]}: {why}")
                bad.append(key)
    return bad


def _blob_problem(store: TieredStore, blob: Blob, good: set[str], name: str) -> str | None:
    if blob.digest not in good:
        return f"output {name!r}: blob {blob.digest[:12]} missing or corrupt on the remote"
    if blob.kind == "tree":
        try:
            files = store.tree_files(blob.digest)
        except BlobError as e:
            return f"output {name!r}: {e}"
        lost = sorted(d for d, _ in files.values() if d not in good)
        if lost:
            return f"output {name!r}: tree file blob {lost[0][:12]} missing or corrupt on the remote"
    return None


def open_for(cache: Path, url: str, mode: str, where: str) -> TieredStore:
    from orchestrator.store.config import open_remote

    return TieredStore(cache, open_remote(url, mode, where))
