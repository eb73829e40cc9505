"""`cache gc --remote-cache URL`: collect the remote as `cache gc` collects the local cache.

An entry's last use on the remote is the newer of its object's modification time and that of the
newest pack that holds it (every build that may write the remote leaves a pack of the entries it
used, hits included), so an entry written long ago and hit every night stays. Entries unused for
``max_age_s`` go, then the least recently used ones until the blobs still needed fit
``max_bytes``; never one a kept manifest names. Then blobs no remaining entry needs (older than the
grace period: a writer uploads blobs before its entry) and packs older than ``max_age_s``.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from orchestrator.hashing import sha256_bytes
from orchestrator.store.gc import GRACE_S, GcReport, fit_quota
from orchestrator.store.remote import Remote, _when

BATCH = 500


def collect_remote(remote: Remote, max_bytes: int | None, max_age_s: float | None,
                   keep: set[str], now: float | None = None) -> GcReport:
    now = time.time() if now is None else now
    report = GcReport()
    entries = _mtimes(remote, f"{remote.base}/ac")
    packs = _mtimes(remote, f"{remote.base}/packs")
    used = dict(entries)
    for name, when in packs.items():
        for key in _pack_keys(remote, name):
            if key in used:
                used[key] = max(used[key], when)
    drop = set()
    if max_age_s is not None:
        drop = {k for k in entries if k not in keep and now - used[k] > max_age_s}
    needs = _needed_blobs(remote, [k for k in sorted(entries) if k not in drop])
    blobs = remote.list_blobs()
    if max_bytes is not None:
        fit_quota(needs, blobs, used, keep, drop, max_bytes)
    remote.delete([remote.entry_path(k) for k in sorted(drop)])
    report.entries_removed = len(drop)
    report.kept_by_manifest = len(keep & set(entries))
    needed = set().union(*needs.values()) if needs else set()
    blob_times = _mtimes(remote, f"{remote.base}/cas/sha256", digests=True)
    gone = sorted(d for d in blobs if d not in needed and now - blob_times.get(d, now) >= GRACE_S)
    remote.delete([remote.blob_path(d) for d in gone])
    report.blobs_removed = len(gone)
    report.bytes_freed = sum(blobs[d] for d in gone)
    report.bytes_left = sum(size for d, size in blobs.items() if d not in set(gone))
    if max_age_s is not None:
        remote.delete([n for n, when in sorted(packs.items()) if now - when > max_age_s])
    return report


def _mtimes(remote: Remote, folder: str, digests: bool = False) -> dict[str, float]:
    """name (the key, a pack's path, or with digests=True a blob's digest) -> modification time."""
    def find() -> dict[str, float]:
        out: dict[str, float] = {}
        for path, info in remote.fs.find(folder, detail=True).items():
            parts = str(path).rsplit("/", 2)
            if parts[-1].startswith("."):
                continue
            name = parts[-2] + parts[-1] if digests else (str(path) if "packs" in folder
                                                           else parts[-1])
            out[name] = _when(info)
        return out

    try:
        return remote.guard("listing", find, {})
    except FileNotFoundError:
        return {}


def _pack_keys(remote: Remote, path: str) -> list[str]:
    with contextlib.suppress(FileNotFoundError, ValueError, TypeError, AttributeError, KeyError):
        return list(json.loads(remote.fs.cat_file(path))["entries"])
    return []


def _needed_blobs(remote: Remote, keys: list[str]) -> dict[str, set[str]]:
    """key -> every digest its entry needs (outputs, tree files, log). An entry that cannot be
    read needs nothing (verify removes it)."""
    needs: dict[str, set[str]] = {}
    listings: dict[str, set[str]] = {}
    for i in range(0, len(keys), BATCH):
        raws = remote.get_entries(keys[i:i + BATCH])
        for key in keys[i:i + BATCH]:
            digests: set[str] = set()
            with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
                entry: dict[str, Any] = json.loads(raws[key])["entry"]
                for b in entry["outputs"].values():
                    digests.add(b["digest"])
                    if b["kind"] == "tree":
                        digests |= listings.get(b["digest"]) or _tree(remote, b["digest"], listings)
                if isinstance(entry.get("log"), str):
                    digests.add(entry["log"])
            needs[key] = digests
    return needs


def _tree(remote: Remote, digest: str, cache: dict[str, set[str]]) -> set[str]:
    files: set[str] = set()
    with contextlib.suppress(FileNotFoundError, ValueError, TypeError, AttributeError, KeyError):
        data = remote.fs.cat_file(remote.blob_path(digest))
        if sha256_bytes(data) == digest:
            files = {str(d) for d, _ in json.loads(data)["files"].values()}
    cache[digest] = files
    return files
