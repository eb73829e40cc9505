"""The local cache in front of a remote one: reads local first, then remote; writes both.

A ``TieredStore`` is the local store (it *is* one: the worker, the sweep, the stat caches and the
materialization are the local store's own) plus a ``Remote``:

- an action entry missing locally is read from the remote (decoded, its signature checked when a
  signing key is set); planning then only checks that the blobs it names exist (listings per
  shard, batched), and bytes move when a task's outputs are needed (an input of a task that runs,
  a target being written): downloaded concurrently, verified against their digest, kept in the
  local cache. A blob whose bytes do not match is refused, reported, and never kept;
- a remote entry whose blobs all ended up local is kept in the local index when the store closes;
- ``put_action`` writes the local entry, then uploads the blobs the entry names that the remote
  lacks, and the entry last, so no reader sees an entry without its blobs.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from orchestrator.hashing import sha256_file
from orchestrator.store.base import Blob, BlobError, CorruptBlob, InvalidEntry, MissingBlob
from orchestrator.store.entries import UntrustedEntry
from orchestrator.store.local import READ_ONLY, LocalStore
from orchestrator.store.remote import Remote

REFUSED = "rbad:"  # index prefix: a remote blob this machine found corrupt


class TieredStore(LocalStore):
    def __init__(self, root: str | os.PathLike[str], remote: Remote) -> None:
        super().__init__(root)
        self.remote = remote
        self.fetched: dict[str, dict[str, Any]] = {}  # remote entries read by this process
        self._raw: dict[str, bytes | None] = {}  # prefetched remote objects (None: absent)
        self.refused: list[str] = []  # why remote entries or blobs were refused
        self.used: dict[str, dict[str, Any]] = {}  # entries this build used: the pack it leaves
        self._packed: dict[str, bytes] = {}  # entry objects read from the remote's packs
        self._on_remote: set[str] = set()  # keys this process read from or wrote to the remote
        self._warned_unverified = False

    # ---- action entries ---------------------------------------------------------------------
    def get_action(self, key: str) -> dict[str, Any] | None:
        entry = super().get_action(key)
        if entry is not None or not self.remote.can_read:
            return entry
        if key in self.fetched:
            return self.fetched[key]
        # a prefetched miss answers once: asked again (after waiting for a lease), look again
        if key in self._packed:
            raw: bytes | None = self._packed.pop(key)
        elif key in self._raw:
            raw = self._raw.pop(key)
        else:
            raw = self.remote.get_entries([key]).get(key)
        return None if raw is None else self._decode(key, raw)

    def _decode(self, key: str, raw: bytes) -> dict[str, Any]:
        from orchestrator.store.entries import SIGNING_KEY_ENV, decode_entry

        if self.remote.sign_key is None and not self._warned_unverified:
            self._warned_unverified = True  # once per build
            self.remote.log(f"warning: entries read from the remote cache {self.remote.url} are "
                            f"not verified (no ${SIGNING_KEY_ENV}): whoever can write it decides "
                            "what this build uses; set the key, as its writers do, to refuse "
                            "unsigned entries")

        try:
            entry = decode_entry(key, raw, self.remote.sign_key)
        except UntrustedEntry as e:
            self._refuse(str(e))
            raise
        self.fetched[key] = entry
        self._on_remote.add(key)
        return entry

    def put_action(self, key: str, entry: dict[str, Any]) -> None:
        super().put_action(key, entry)
        self.used[key] = entry
        if not self.remote.can_write:
            return
        files = self.entry_files(entry)
        before = self.remote.bytes_out
        self.remote.upload(files)
        if self.remote.can_write and self.remote.put_entry(key, entry):
            self._on_remote.add(key)
            sent = self.remote.bytes_out - before
            if sent > 2**20:
                self.remote.log(f"remote: uploaded {len(files)} blob(s) of {key[:12]} "
                                f"({sent / 2**20:.1f} MiB) to {self.remote.url}")

    def begin_prefetch(self) -> bool:
        """Read the remote's packs once, before a batched prefetch (orchestrator.plan.prefetch);
        False when the remote cannot be read."""
        if not self.remote.can_read:
            return False
        self._packed = self.remote.read_packs()
        return True

    def batch_entries(self, keys: dict[str, str]) -> dict[str, dict[str, Any]]:
        """Task id -> entry of every key found locally, in the packs or on the remote (one
        batched request for what is left); the remote's misses are remembered."""
        local: dict[str, dict[str, Any] | None] = {}
        for tid, key in keys.items():
            with contextlib.suppress(InvalidEntry):
                local[tid] = LocalStore.get_action(self, key)
        ask = [k for tid, k in keys.items() if local.get(tid) is None and k not in self._raw
               and k not in self.fetched]
        found = {k: self._packed.pop(k) for k in ask if k in self._packed}
        found.update(self.remote.get_entries([k for k in ask if k not in found]))
        self._raw.update({k: None for k in ask if k not in found})
        out: dict[str, dict[str, Any]] = {}
        for tid, key in keys.items():
            entry = local.get(tid) or self.fetched.get(key)
            if entry is None and key in found:
                with contextlib.suppress(InvalidEntry):
                    entry = self._decode(key, found[key])
            if entry is not None:
                out[tid] = entry
        return out

    def prefetch_blobs(self, blobs: list[Blob]) -> None:
        """Check, in one listing per shard, which of these blobs the remote holds (trees'
        listings are downloaded: planning needs them)."""
        self._prefetch_blobs(blobs)

    def _prefetch_blobs(self, blobs: list[Blob]) -> None:
        with contextlib.suppress(BlobError, KeyError, TypeError, ValueError):
            trees = [b.digest for b in blobs if b.kind == "tree" and not self._local_ok(b.digest)]
            self._fetch(trees)  # listings are small: planning needs them to check a tree
            digests = {b.digest for b in blobs}
            for b in blobs:
                if b.kind == "tree":
                    digests |= {d for d, _ in LocalStore.tree_files(self, b.digest).values()}
            self.remote.has_blobs(d for d in digests if not self._local_ok(d))

    # ---- blobs ------------------------------------------------------------------------------
    def check(self, blob: Blob) -> str | None:
        problem = super().check(blob)
        if problem is None or not self.remote.can_read:
            return problem
        if blob.kind == "tree":
            try:
                if not self._local_ok(blob.digest):
                    self._fetch([blob.digest])
                digests = [d for d, _ in LocalStore.tree_files(self, blob.digest).values()]
            except BlobError as e:
                return f"tree listing {e}"
        else:
            digests = [blob.digest]
        need = [d for d in digests if not self._local_ok(d)]
        have = self.remote.has_blobs(need)
        lost = [d for d in need if d not in have or self.get_meta(REFUSED + d)]
        if not lost:
            return None
        if self.get_meta(REFUSED + lost[0]):
            return f"blob {lost[0][:12]} refused: corrupt on the remote"
        return f"blob {lost[0][:12]} missing (here and on the remote)"

    def read_bytes(self, digest: str) -> bytes:
        with contextlib.suppress(BlobError):
            return super().read_bytes(digest)
        self._fetch([digest])
        return super().read_bytes(digest)

    def tree_files(self, digest: str) -> dict[str, tuple[str, int]]:
        if not self._local_ok(digest):
            self._fetch([digest])
        return super().tree_files(digest)

    def materialize(self, blob: Blob, dest: Path) -> None:
        self.ensure(blob)
        super().materialize(blob, dest)

    def ensure(self, blob: Blob) -> None:
        """Make the blob (a tree: its listing and every file) local, downloading what is not."""
        self._fetch([blob.digest] if not self._local_ok(blob.digest) else [])
        if blob.kind == "tree":
            files = super().tree_files(blob.digest)
            self._fetch(sorted({d for d, _ in files.values() if not self._local_ok(d)}))

    def fetch_outputs(self, blobs: list[Blob]) -> list[str]:
        """Download (verified, concurrently) the blobs a build is about to need; what was
        missing or refused, one line each (the caller plans again: those tasks are misses now)."""
        problems: list[str] = []
        missing = {b.digest: b.size for b in blobs if not self._local_ok(b.digest)}
        total = sum(missing.values())
        if total > 2**20:
            self.remote.log(f"remote: fetching {len(missing)} output(s) ({total / 2**20:.1f} MiB) "
                            f"that this build needs from {self.remote.url}")
        files = sorted(d for d in missing)
        self._fetch(files, problems)
        for tree in sorted({b.digest for b in blobs if b.kind == "tree"}):
            if self._local_ok(tree):
                files = sorted({d for d, _ in LocalStore.tree_files(self, tree).values()
                                if not self._local_ok(d)})
                self._fetch(files, problems)
        return problems

    def _fetch(self, digests: list[str], problems: list[str] | None = None) -> None:
        """Download blobs concurrently into the local cache, each verified against its digest."""
        if not digests:
            return
        if not self.remote.can_read:
            raise MissingBlob(f"blob {digests[0][:12]} missing (the remote cache is off)")
        start, before = time.monotonic(), self.remote.bytes_in
        os.unlink(self._tmp_name(self.blob_path(digests[0])))  # its folder, before the threads
        errors: list[BlobError] = []

        def one(digest: str) -> None:
            try:
                self._download(digest)
            except BlobError as e:
                errors.append(e)

        done: list[None] = []
        self.remote.guard("downloading blobs", lambda: self.remote._map(one, digests), done)
        if self.remote.disabled is not None and not errors:
            errors.append(MissingBlob(f"blob {digests[0][:12]}: the remote cache is unreachable"))
        got = self.remote.bytes_in - before
        if got > 2**20:
            self.remote.log(f"remote: fetched {len(digests)} blob(s) ({got / 2**20:.1f} MiB) in "
                            f"{time.monotonic() - start:.1f}s from {self.remote.url}")
        if problems is not None:
            problems += [str(e) for e in errors]
        elif errors:
            raise errors[0]

    def _download(self, digest: str) -> None:
        dest = self.blob_path(digest)
        self._shard(dest)
        tmp = self._tmp_name(dest)
        try:
            try:
                self.remote.download(digest, tmp)
            except FileNotFoundError:
                self.remote.known.discard(digest)
                raise MissingBlob(f"blob {digest[:12]} missing (here and on the remote)") from None
            if sha256_file(tmp) != digest:
                self._poisoned(digest)
            size = os.path.getsize(tmp)
            os.chmod(tmp, READ_ONLY)
            os.replace(tmp, dest)
            self._remember(dest, digest)
            with self.remote.lock:
                self.remote.bytes_in += size
                self.remote.blobs_in += 1
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _poisoned(self, digest: str) -> None:
        """A remote blob whose bytes do not match: never kept, marked so that this machine
        treats it as missing (its tasks are rebuilt), and removed from a remote we may write
        (so that a good upload replaces it)."""
        self.remote.known.discard(digest)
        self.set_meta(REFUSED + digest, True)
        removed = ""
        if self.remote.can_write:
            self.remote.delete([self.remote.blob_path(digest)])
            removed = "; removed from the remote"
        why = (f"blob {digest[:12]} from the remote {self.remote.url} does not match its digest "
               f"(a broken or poisoned remote): refused, not kept{removed}")
        self._refuse(why)
        raise CorruptBlob(why)

    def _local_ok(self, digest: str) -> bool:
        return self._intact(self.blob_path(digest), digest)

    def entry_files(self, entry: dict[str, Any]) -> dict[str, str]:
        """digest -> local path of every blob the entry names (tree files before nothing: all
        are uploaded before the entry)."""
        digests: set[str] = set()
        for b in entry.get("outputs", {}).values():
            digests.add(b["digest"])
            if b["kind"] == "tree":
                digests |= {d for d, _ in LocalStore.tree_files(self, b["digest"]).values()}
        if isinstance(entry.get("log"), str):
            digests.add(entry["log"])
        return {d: str(self.blob_path(d)) for d in sorted(digests) if self.blob_path(d).is_file()}

    def _refuse(self, why: str) -> None:
        if why not in self.refused:
            self.refused.append(why)
            self.remote.log(f"warning: {why}")

    def mark_used(self, key: str, entry: dict[str, Any]) -> None:
        """A hit of this build (see gc.record_use): it goes into the pack the build leaves."""
        self.used[key] = entry

    def close(self) -> None:
        """Leave a pack of the entries this build used (readwrite/write); keep locally the remote
        entries whose blobs are all local now; then close."""
        if self.used and self.remote.can_write:  # local hits the remote holds count as uses
            self._on_remote |= self.remote.has_entries(sorted(set(self.used) - self._on_remote))
        packed = {k: e for k, e in self.used.items() if k in self._on_remote}
        if packed:  # only what the remote holds: a pack is a faster way to its ac/ objects
            self.remote.put_pack(packed)
        self.used = {}
        if self._index is not None:
            for key, entry in sorted(self.fetched.items()):
                with contextlib.suppress(BlobError, KeyError, TypeError, ValueError, InvalidEntry):
                    outs = [Blob.from_json(b) for b in entry["outputs"].values()]
                    if LocalStore.get_action(self, key) is None and all(
                            LocalStore.check(self, b) is None for b in outs):
                        LocalStore.put_action(self, key, entry)
            self.fetched.clear()
        super().close()
