"""Locks between builds that share a cache or a machine: all `fcntl.flock`, taken without blocking
(LOCK_NB) so a build's scheduler loop goes on while it waits, and gone with the process that held
them (a build killed with -9 leaves no lock behind).

- A lock per action key, ``<cache>/locks/ac/<key>.lock`` (exclusive): taken before a task runs and
  released once its entry is written or it failed. A build that finds the key locked waits and then
  looks in the store again: another build may have built it meanwhile. The holder unlinks the file
  before releasing it; a build that locked a file unlinked meanwhile sees that its inode is no
  longer the path's and tries again, so the files do not pile up.
- The machine lock, ``benchmark.lock`` in the machine-wide lock folder (``$DEPLOY_BUILD_LOCK_DIR``,
  else ``$XDG_RUNTIME_DIR/deploy-build``, else ``/tmp/deploy-build-<uid>``; a folder this user
  owns, mode 0700: one that another user planted there, or a symlink, is not used and the cache's
  ``locks/`` is used instead): every running task holds it shared; a task of an ``exclusive`` step
  (the benchmark) holds it exclusive, so no task of any build of this user on this machine, whatever
  its cache, runs beside a benchmark. A benchmark waiting for it holds ``benchmark.waiting``
  exclusive, and a task starts only if it can lock that one shared for a moment: no new task
  starts while a benchmark waits, so it is not starved by a stream of tasks of other builds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
import uuid
from pathlib import Path
from typing import Any

MACHINE_LOCK = "benchmark.lock"
WAITING_LOCK = "benchmark.waiting"  # held by a benchmark waiting for the machine lock
LEASE_RETRY_S = 1.0  # a key whose remote lease another build holds is asked for again after this


def lock_dir(cache_root: Path) -> Path:
    """The machine-wide lock folder of this user (see the module doc)."""
    env = os.environ.get("DEPLOY_BUILD_LOCK_DIR")
    if env:
        return Path(env)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(runtime) / "deploy-build" if runtime else Path(f"/tmp/deploy-build-{os.getuid()}")
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError:
        return cache_root / "locks"
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        return cache_root / "locks"  # not ours, a link, or writable by others: do not trust it
    return folder


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


def try_lock(path: Path, exclusive: bool = True) -> int | None:
    """The fd of path, flock'ed (exclusive or shared) without waiting; None when someone else
    holds it in a conflicting way."""
    while True:
        fd = _open(path)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.lstat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # its holder unlinked it before releasing it: lock the path's new file


def release(fd: int, path: Path | None = None) -> None:
    """Release a lock; with path (exclusive locks only), remove its file first."""
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)
    os.close(fd)


class BuildLocks:
    """The locks one build holds: per action key and on the machine, by task id. With a remote
    cache (``leases``: a store.remote.Remote), the key lock extends to the remote as a lease object
    with an expiry, so builds on other machines wait for it too."""

    def __init__(self, cache_root: Path, leases: Any = None) -> None:
        self.leases = leases
        self.owner = uuid.uuid4().hex
        self._tried: dict[str, float] = {}  # key -> when its remote lease was last asked for
        self.keys_dir = cache_root / "locks" / "ac"
        self.machine = lock_dir(cache_root) / MACHINE_LOCK
        self.waiting = lock_dir(cache_root) / WAITING_LOCK
        self._keys: dict[str, tuple[int, Path]] = {}
        self._machine: dict[str, int] = {}
        self._key_of: dict[str, str] = {}
        self._waiting: dict[str, int] = {}

    def holds_key(self, tid: str) -> bool:
        return tid in self._keys

    def lock_key(self, tid: str, key: str) -> bool:
        path = self.keys_dir / f"{key}.lock"
        fd = try_lock(path)
        if fd is None:
            return False
        if self.leases is not None:
            if time.monotonic() - self._tried.get(key, -LEASE_RETRY_S) < LEASE_RETRY_S:
                release(fd, path)
                return False  # asked the remote a moment ago: not every scheduler tick
            self._tried[key] = time.monotonic()
            if not self.leases.lease(key, self.owner):
                release(fd, path)
                return False
        self._keys[tid] = (fd, path)
        self._key_of[tid] = key
        return True

    def lock_machine(self, tid: str, exclusive: bool) -> bool:
        if exclusive:
            if tid not in self._waiting:  # announce it: no new task starts meanwhile
                wfd = try_lock(self.waiting, exclusive=True)
                if wfd is None:
                    return False  # another benchmark waits, or a task is starting this instant
                self._waiting[tid] = wfd
        else:
            wfd = try_lock(self.waiting, exclusive=False)
            if wfd is None:
                return False  # a benchmark waits for the machine
            os.close(wfd)
        fd = try_lock(self.machine, exclusive)
        if fd is None:
            return False
        self._machine[tid] = fd
        if tid in self._waiting:
            os.close(self._waiting.pop(tid))
        return True

    def release(self, tid: str) -> None:
        if tid in self._waiting:
            os.close(self._waiting.pop(tid))
        if tid in self._machine:
            os.close(self._machine.pop(tid))
        if tid in self._keys:
            release(*self._keys.pop(tid))
            key = self._key_of.pop(tid, None)
            if self.leases is not None and key is not None:
                self.leases.release_lease(key, self.owner)

    def release_all(self) -> None:
        for tid in {*self._keys, *self._machine, *self._waiting}:
            self.release(tid)
