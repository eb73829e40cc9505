"""A remote cache: any fsspec URL (``s3://bucket/prefix`` through s3fs, ``file:///shared/cache``).

Layout under the URL, the local cache's own, with no database::

    cas/sha256/ab/cdef...  blobs (files and tree listings), named by their digest
    ac/<key>               action entries: small canonical JSON {"key", "entry"[, "sig"]}
    leases/<key>.json      "someone builds this key": {"owner", "expires", "host", "pid",
                           "command", "since"} (see Remote.lease)
    packs/<sha256>.json    immutable snapshots {"entries": {key: <the ac/<key> object>}} of the
                           entries one build used, so that the next machine planning the same
                           nightly reads them in a few requests instead of one per task

Only this module talks to fsspec, and it is imported only when a remote is configured. Every
remote call goes through ``Remote.guard``: a remote that cannot be reached (no route, no bucket,
no permission) is switched off with one warning and the build goes on with the local cache only.

Write access to the remote is trust: whoever can write ``ac/`` decides what every reader builds
from. A team that wants more sets ``DEPLOY_BUILD_CACHE_SIGNING_KEY``: writers sign each entry
(HMAC-SHA256 over its key and its content) and readers holding the key refuse entries that are
unsigned or signed with another key, even ones whose blobs are valid. Blobs need no signature:
they are named by their digest and verified on download.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from orchestrator.hashing import canonical_json
from orchestrator.store.base import InvalidEntry
from orchestrator.store.entries import encode_entry

Mode = Literal["read", "write", "readwrite"]
MODES: tuple[Mode, ...] = ("read", "write", "readwrite")
OPTIONS_ENV = "DEPLOY_BUILD_REMOTE_OPTIONS"  # JSON: fsspec storage options (endpoint_url, ...)
TRANSFERS = 16  # concurrent requests
LEASE_TTL_S = 600.0
# a lease is never honoured past what this tool itself writes: its object's modification time
# plus LEASE_TTL_S, plus this much for clocks that disagree (a lease "expiring in 2100" is forged)
LEASE_CLOCK_SKEW_S = 300.0
LEASE_SETTLE_S = 0.5  # without conditional writes: how long a lease settles before it is read back
PACKS_READ = 4  # the newest packs a planning machine reads
MAX_PACK_BYTES = 64 * 2**20
T = TypeVar("T")


class RemoteUnavailable(Exception):
    pass


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def lease_holder_fields() -> dict[str, Any]:
    """Who takes a lease, as the message of a build waiting for it names them."""
    import socket

    from orchestrator.store.holder import this_command

    return {"host": socket.gethostname(), "pid": os.getpid(), "command": this_command(),
            "since": round(time.time(), 3)}


def lease_holder(lease: dict[str, Any]) -> Any:
    """A lease object as an orchestrator.store.holder.Holder (one wording for every wait)."""
    from orchestrator.store.holder import Holder

    pid, since = lease.get("pid"), lease.get("since")
    return Holder(pid if isinstance(pid, int) else None, str(lease.get("command") or ""),
                  since=float(since) if isinstance(since, int | float) else None,
                  mode="exclusive", host=str(lease.get("host") or "another machine"))


class Remote:
    """The remote half of a tiered store: batched, concurrent object operations on one URL."""

    def __init__(self, url: str, mode: Mode = "readwrite", sign_key: bytes | None = None,
                 options: dict[str, Any] | None = None, log: Callable[[str], None] = _log) -> None:
        import fsspec

        self.url = url
        self.mode = mode
        self.sign_key = sign_key
        self.log = log
        self.disabled: str | None = None  # why the remote was switched off, once it was
        self.options = dict(options or {})  # as given (a Ray node opens the remote with them)
        opts = dict(self.options)
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        if protocol in ("s3", "s3a"):  # fail fast on an unreachable endpoint
            opts.setdefault("config_kwargs", {"connect_timeout": 5, "read_timeout": 60,
                                              "retries": {"max_attempts": 2}})
        self.fs, path = fsspec.core.url_to_fs(url, **opts)
        self.base = path.rstrip("/")
        protos = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.is_local = "file" in protos or "local" in protos
        self.known: set[str] = set()  # digests seen on the remote in this process
        self.bytes_in = self.bytes_out = self.blobs_in = self.blobs_out = 0
        self.lock = threading.Lock()  # for the counters, updated by transfer threads
        self._conditional_put: bool | None = None  # whether pipe_file(mode="create") works
        self.holders: dict[str, dict[str, Any]] = {}  # key -> the lease another build holds
        self._first_seen: dict[str, float] = {}  # lease path -> when first seen (no mtime)

    # ---- what may be done -------------------------------------------------------------------
    @property
    def can_read(self) -> bool:
        return self.disabled is None and self.mode in ("read", "readwrite")

    @property
    def can_write(self) -> bool:
        return self.disabled is None and self.mode in ("write", "readwrite")

    def guard(self, what: str, fn: Callable[[], T], default: T) -> T:
        """Run one remote operation; on anything but a normal miss, switch the remote off with
        one warning and return default (the build goes on with the local cache)."""
        if self.disabled is not None:
            return default
        try:
            return fn()
        except (InvalidEntry, FileNotFoundError):
            raise
        except Exception as e:  # network, credentials, a missing bucket, a read-only share
            self.disabled = f"{type(e).__name__}: {e}"[:300]
            self.log(f"warning: remote cache {self.url} unusable while {what} ({self.disabled}); "
                     "going on with the local cache only")
            return default

    def probe(self) -> None:
        """Check the remote answers (and, for a folder, create it when writing)."""
        def check() -> None:
            if self.is_local and self.mode != "read":
                self.fs.makedirs(self.base, exist_ok=True)
            self.fs.ls(self.base, detail=False)

        with contextlib.suppress(FileNotFoundError):
            self.guard("connecting", check, None)

    # ---- paths --------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> str:
        return f"{self.base}/cas/sha256/{digest[:2]}/{digest[2:]}"

    def entry_path(self, key: str) -> str:
        return f"{self.base}/ac/{key}"

    def lease_path(self, key: str) -> str:
        return f"{self.base}/leases/{key}.json"

    # ---- action entries ---------------------------------------------------------------------
    def get_entries(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The raw objects of those keys that exist (one batched, concurrent request)."""
        paths = {self.entry_path(k): k for k in keys}
        if not paths or not self.can_read:
            return {}

        def cat() -> dict[str, bytes]:
            found = self.fs.cat(sorted(paths), on_error="omit")
            names = set(paths.values())
            out = {str(p).rsplit("/", 1)[1]: v for p, v in found.items()}
            return {k: bytes(v) for k, v in out.items() if k in names and isinstance(v, bytes)}

        return self.guard("reading action entries", cat, {})

    def put_entry(self, key: str, entry: dict[str, Any]) -> bool:
        if not self.can_write:
            return False
        data = encode_entry(key, entry, self.sign_key)

        def put() -> bool:
            self._write(self.entry_path(key), data)
            return True

        return self.guard("writing an action entry", put, False)

    # ---- packs: the entries of one build in one object ---------------------------------------
    def put_pack(self, entries: dict[str, dict[str, Any]]) -> None:
        """Write the entries as one pack named by its digest (nothing if that pack exists)."""
        if not self.can_write or len(entries) < 2:
            return
        body = canonical_json({"entries": {k: encode_entry(k, e, self.sign_key).decode()
                                           for k, e in sorted(entries.items())}}).encode()
        path = f"{self.base}/packs/{hashlib.sha256(body).hexdigest()}.json"
        # written even when it exists: its time says when these entries were last used (gc)
        with contextlib.suppress(FileNotFoundError):
            self.guard("writing a pack", lambda: self._write(path, body), None)

    def has_entries(self, keys: list[str]) -> set[str]:
        """Which keys have an entry on the remote: a few existence checks, or for many keys one
        listing of ac/."""
        if not keys or not self.can_read and not self.can_write:
            return set()
        if len(keys) > 64:
            return set(keys) & set(self.list_entries())

        def exists(key: str) -> bool:
            return bool(self.fs.exists(self.entry_path(key)))

        none: list[bool] = []
        found = self.guard("checking entries", lambda: self._map(exists, keys), none)
        return {k for k, there in zip(keys, found, strict=False) if there}

    def read_packs(self, newest: int = PACKS_READ) -> dict[str, bytes]:
        """key -> entry object, from the newest packs (each decoded later like an ac/ object:
        key and signature checked). A pack is only a faster way to the same objects."""
        def read() -> dict[str, bytes]:
            try:
                listing = self.fs.ls(f"{self.base}/packs", detail=True, refresh=True)
            except FileNotFoundError:
                return {}
            infos = sorted((i for i in listing if int(i.get("size") or 0) <= MAX_PACK_BYTES),
                           key=lambda i: (_when(i), str(i["name"])), reverse=True)[:newest]
            out: dict[str, bytes] = {}
            for raw in self.fs.cat([str(i["name"]) for i in infos], on_error="omit").values():
                with contextlib.suppress(ValueError, TypeError, AttributeError, RecursionError):
                    for k, v in json.loads(raw)["entries"].items():
                        if isinstance(k, str) and isinstance(v, str):
                            out.setdefault(k, v.encode())
            return out

        if not self.can_read:
            return {}
        with contextlib.suppress(FileNotFoundError):
            return self.guard("reading packs", read, {})
        return {}

    def list_entries(self) -> list[str]:
        def find() -> list[str]:
            return sorted(p.rsplit("/", 1)[1] for p in self.fs.find(f"{self.base}/ac"))

        try:
            return self.guard("listing action entries", find, [])
        except FileNotFoundError:
            return []

    def delete(self, paths: list[str]) -> None:
        if paths:
            self.guard("deleting", lambda: self.fs.rm(paths), None)

    # ---- blobs ------------------------------------------------------------------------------
    def has_blobs(self, digests: Iterable[str]) -> set[str]:
        """Which of digests the remote holds: one listing per shard touched, concurrently (a shard
        listing answers for every digest in it), remembered for this process."""
        wanted = {d for d in digests if d not in self.known}
        shards = sorted({d[:2] for d in wanted})
        if shards and self.disabled is None:
            def ls(shard: str) -> list[str]:
                try:
                    names = self.fs.ls(f"{self.base}/cas/sha256/{shard}", detail=False, refresh=True)
                except FileNotFoundError:
                    return []
                return [shard + str(n).rsplit("/", 1)[1] for n in names]

            none: list[list[str]] = []
            found = self.guard("checking blobs", lambda: self._map(ls, shards), none)
            present = {d for names in found for d in names}
            self.known |= present & wanted
        return {d for d in digests if d in self.known}

    def download(self, digest: str, dest: str) -> None:
        """Copy the blob to the local file dest (FileNotFoundError when the remote lacks it)."""
        self.fs.get_file(self.blob_path(digest), dest)

    def upload(self, files: dict[str, str]) -> int:
        """Upload digest -> local path for those the remote lacks, concurrently; bytes sent."""
        if not self.can_write:
            return 0
        missing = sorted(set(files) - self.has_blobs(files))

        def put(digest: str) -> int:
            with open(files[digest], "rb") as f:
                data = f.read()
            self._write(self.blob_path(digest), data)
            return len(data)

        none: list[int] = []
        sent = sum(self.guard("uploading blobs", lambda: self._map(put, missing), none))
        if self.disabled is None:
            self.known |= set(missing)
            self.blobs_out += len(missing)
            self.bytes_out += sent
        return sent

    def list_blobs(self) -> dict[str, int]:
        """digest -> size of every blob on the remote."""
        def find() -> dict[str, int]:
            out: dict[str, int] = {}
            for p, info in self.fs.find(f"{self.base}/cas/sha256", detail=True).items():
                shard, name = str(p).rsplit("/", 2)[1:]
                if not name.startswith("."):
                    out[shard + name] = int(info.get("size") or 0)
            return out

        try:
            return self.guard("listing blobs", find, {})
        except FileNotFoundError:
            return {}

    # ---- leases -------------------------------------------------------------------------------
    def lease(self, key: str, owner: str, ttl_s: float = LEASE_TTL_S) -> bool:
        """Take the lease on key unless another owner holds one that has not expired.

        The lease object is created only where none exists (a folder: a hard link, which fails on
        an existing name; S3: a conditional PUT, ``If-None-Match: *``), so of two builds asking
        at once exactly one gets it. A lease whose holder died is taken over once it expires
        (two builds taking over the same expired lease within a moment of each other may both
        get it). Where a store has no create-if-absent, the lease is written, left to settle and
        read back: the later writer wins. In those rare cases two builds run one task, which is
        harmless (content-addressed, the same entry).
        """
        if not self.can_write:
            return True
        path = self.lease_path(key)

        def body() -> bytes:
            return canonical_json({"expires": time.time() + ttl_s, "owner": owner,
                                   **lease_holder_fields()}).encode()

        def take() -> bool:
            for _ in range(2):  # a second try only after removing an expired lease
                if self._create(path, body()):
                    return True
                current = self._read_lease(path)
                if current is None:
                    continue  # released between the two calls: ask again
                if current.get("owner") == owner:
                    self._write(path, body())  # ours: extend it
                    return True
                if self._honoured_until(path, current) > time.time():
                    self.holders[key] = current  # who, for the message of the waiting build
                    return False
                if self._read_lease(path) == current:  # its holder died: free it (unless
                    with contextlib.suppress(FileNotFoundError):  # another build just did)
                        self.fs.rm(path)
            return False

        return self.guard("taking a lease", take, True)

    def _create(self, path: str, data: bytes) -> bool:
        """Write path only if it does not exist; False when it did."""
        if self.is_local:
            try:
                _place_whole(path, data, os.link)  # atomic, and refused when the name exists
                return True
            except FileExistsError:
                return False
        if self._conditional_put is not False:
            try:
                self.fs.pipe_file(path, data, mode="create")
                self._conditional_put = True
                return True
            except FileExistsError:
                return False
            except (TypeError, NotImplementedError, ValueError):
                self._conditional_put = False  # this backend cannot: fall back below
        if self._read_lease(path) is not None or self.fs.exists(path):
            return False
        self._write(path, data)
        time.sleep(LEASE_SETTLE_S)  # let a concurrent writer's PUT land, then see who won
        back = self.fs.cat_file(path)
        return bool(back == data)

    def _honoured_until(self, path: str, lease: dict[str, Any]) -> float:
        """When a lease stops being honoured: its expiry, capped at what this tool would write
        (the object's modification time + LEASE_TTL_S + LEASE_CLOCK_SKEW_S; where the store
        gives no time, the first time this process saw it)."""
        expires = lease.get("expires")
        expires = float(expires) if isinstance(expires, int | float) else 0.0
        modified = self._modified(path)
        if modified is None:
            modified = self._first_seen.setdefault(path, time.time())
        return min(expires, modified + LEASE_TTL_S + LEASE_CLOCK_SKEW_S)

    def _modified(self, path: str) -> float | None:
        try:
            info = self.fs.info(path)
        except (OSError, ValueError):
            return None
        value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        return float(value) if isinstance(value, int | float) else None

    def lease_keys(self) -> list[str]:
        """The keys that have a lease object on the remote."""
        def find() -> list[str]:
            try:
                names = self.fs.ls(f"{self.base}/leases", detail=False)
            except FileNotFoundError:
                return []
            return [str(n).rsplit("/", 1)[-1].removesuffix(".json") for n in names
                    if str(n).endswith(".json")]

        return self.guard("listing leases", find, [])

    def break_lease(self, key: str) -> dict[str, Any] | None:
        """Remove the lease on key whoever holds it (`deploy-build cache unlock`); what it said,
        or None when there was none."""
        path = self.lease_path(key)
        current = self._read_lease(path)
        if current is None and not self.fs.exists(path):
            return None
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path)
        return current or {}

    def release_lease(self, key: str, owner: str) -> None:
        path = self.lease_path(key)

        def drop() -> None:
            current = self._read_lease(path)
            if current and current.get("owner") == owner:
                self.fs.rm(path)

        if self.can_write:
            with contextlib.suppress(FileNotFoundError):
                self.guard("releasing a lease", drop, None)

    def _read_lease(self, path: str) -> dict[str, Any] | None:
        try:
            value = json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # a torn or foreign object: treat as free
        return value if isinstance(value, dict) else None

    # ---- internals ----------------------------------------------------------------------------
    def _write(self, path: str, data: bytes) -> None:
        """Write one object whole: an object store's PUT is atomic; a folder gets a temp file
        renamed into place, so a reader never sees half a blob or entry."""
        if not self.is_local:
            self.fs.pipe_file(path, data)
            return
        _place_whole(path, data, os.replace)

    def _map(self, fn: Callable[[str], T], items: list[str]) -> list[T]:
        if len(items) <= 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(min(TRANSFERS, len(items))) as pool:
            return list(pool.map(fn, items))


def _place_whole(path: str, data: bytes, place: Callable[[str, str], None]) -> None:
    """Write data to a temp file beside path, then place it there with one atomic call
    (os.replace: overwrite; os.link: only where nothing is, else FileExistsError)."""
    parent = path.rsplit("/", 1)[0]
    os.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        place(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _when(info: dict[str, Any]) -> float:
    """An object's modification time from an fsspec listing (S3: LastModified, a folder: mtime)."""
    value = info.get("LastModified", info.get("mtime", 0))
    stamp = getattr(value, "timestamp", None)
    try:
        return float(stamp() if callable(stamp) else value)
    except (TypeError, ValueError):
        return 0.0
