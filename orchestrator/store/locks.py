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

A waiting build names who it waits for (`holders`): the processes that hold the lock, from
``/proc/locks``, with what each build wrote about itself when it took the lock (its command, its
tasks, since when): ``holders/<pid>.json`` in the lock folder for the machine lock, the key lock
file's own content for a key. A record whose process is gone is ignored (and removed).
`BuildLocks` is a context manager: whatever ends the block, every lock it took is released.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from orchestrator.host.procs import alive
from orchestrator.store.holder import Holder, this_command  # noqa: F401 - re-exported

MACHINE_LOCK = "benchmark.lock"
WAITING_LOCK = "benchmark.waiting"  # held by a benchmark waiting for the machine lock
LEASE_RETRY_S = 1.0  # a key whose remote lease another build holds is asked for again after this
HOLDERS = "holders"  # <lock folder>/holders/<pid>.json: what a build holding the machine lock is


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


def describe_holders(holders: list[Holder], now: float | None = None) -> str:
    if not holders:
        return "its holder could not be named (no /proc/locks here, or it has just let go)"
    text = "; ".join(h.describe(now) for h in holders[:3])
    return "held by " + text + (f" and {len(holders) - 3} more" if len(holders) > 3 else "")


def _lock_pids(path: Path, locks_text: str | None = None) -> dict[int, str] | None:
    """pid -> "exclusive"/"shared" of the processes holding a flock on path, from /proc/locks;
    None where /proc/locks cannot be read."""
    try:
        st = os.stat(path)
        text = Path("/proc/locks").read_text() if locks_text is None else locks_text
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    pids: dict[int, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue  # a blocked waiter, or a POSIX lock: not ours
        try:
            major, minor, ino = fields[5].split(":")
            where = (int(major, 16), int(minor, 16), int(ino))
            pid = int(fields[4])
        except ValueError:
            continue
        if where == want:
            pids[pid] = "exclusive" if fields[3] == "WRITE" else "shared"
    return pids


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    text = " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a)
    return text if len(text) <= 120 else text[:117] + "..."


def _read_record(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            value = json.loads(f.read(65536) or b"{}")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _holder(pid: int, mode: str, record: dict[str, Any]) -> Holder:
    if record.get("pid") != pid:
        return Holder(pid, _cmdline(pid), mode=mode)
    tasks = record.get("tasks")
    since = record.get("since")
    return Holder(pid, str(record.get("command") or _cmdline(pid)),
                  tuple(str(t) for t in tasks) if isinstance(tasks, list) else (),
                  float(since) if isinstance(since, int | float) else None, mode)


def machine_holders(folder: Path, locks_text: str | None = None) -> list[Holder]:
    """Who holds the machine lock in this lock folder (see the module doc), oldest first."""
    pids = _lock_pids(folder / MACHINE_LOCK, locks_text)
    records: dict[int, dict[str, Any]] = {}
    for f in sorted((folder / HOLDERS).glob("*.json")):
        rec = _read_record(f)
        pid = rec.get("pid")
        if not isinstance(pid, int) or not alive(pid):
            with contextlib.suppress(OSError):
                f.unlink()  # its build is gone (killed): the record is stale
            continue
        records[pid] = rec
    if pids is None:  # no /proc/locks: trust the records of live processes
        pids = {pid: str(rec.get("mode") or "") for pid, rec in records.items()}
    found = [_holder(pid, mode, records.get(pid, {})) for pid, mode in sorted(pids.items())
             if pid != os.getpid()]
    return sorted(found, key=lambda h: (h.since is None, h.since or 0.0, h.pid or 0))


def key_holder(path: Path) -> list[Holder]:
    """Who holds a key lock: the record its holder wrote into the lock file."""
    rec = _read_record(path)
    pid = rec.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return []
    return [_holder(pid, "exclusive", rec)]


def _write_record(path: Path, record: dict[str, Any]) -> None:
    """Replace path with a JSON record (a temp file renamed into place: readers see all or
    nothing)."""
    from orchestrator.hashing import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        atomic_write(path, json.dumps(record, sort_keys=True), 0o600)


class BuildLocks:
    """The locks one build holds: per action key and on the machine, by task id. With a remote
    cache (``leases``: a store.remote.Remote), the key lock extends to the remote as a lease object
    with an expiry, so builds on other machines wait for it too. Use it as a context manager:
    every lock is released however the block ends."""

    def __init__(self, cache_root: Path, leases: Any = None) -> None:
        self.leases = leases
        self.owner = uuid.uuid4().hex
        self._tried: dict[str, float] = {}  # key -> when its remote lease was last asked for
        self.keys_dir = cache_root / "locks" / "ac"
        folder = lock_dir(cache_root)
        self.machine = folder / MACHINE_LOCK
        self.waiting = folder / WAITING_LOCK
        self.record = folder / HOLDERS / f"{os.getpid()}.json"
        self._keys: dict[str, tuple[int, Path]] = {}
        self._machine: dict[str, int] = {}
        self._key_of: dict[str, str] = {}
        self._waiting: dict[str, int] = {}
        self._labels: dict[str, str] = {}  # task id -> label, for what the records say
        self._exclusive: set[str] = set()  # task ids that asked for the machine alone
        self._since: float | None = None  # when this build took the machine lock it holds
        self._blocked: dict[str, Path] = {}  # task id -> the lock its last attempt found taken

    def __enter__(self) -> BuildLocks:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release_all()

    def holds_key(self, tid: str) -> bool:
        return tid in self._keys

    def lock_key(self, tid: str, key: str, label: str = "") -> bool:
        path = self.keys_dir / f"{key}.lock"
        fd = try_lock(path)
        if fd is None:
            self._blocked[tid] = path
            return False
        if self.leases is not None:
            if time.monotonic() - self._tried.get(key, -LEASE_RETRY_S) < LEASE_RETRY_S:
                release(fd, path)
                return False  # asked the remote a moment ago: not every scheduler tick
            self._tried[key] = time.monotonic()
            if not self.leases.lease(key, self.owner):
                release(fd, path)
                self._blocked[tid] = Path(f"remote-lease:{key}")
                return False
        self._keys[tid] = (fd, path)
        self._key_of[tid] = key
        self._blocked.pop(tid, None)
        with contextlib.suppress(OSError):  # who holds it, for a build that waits for it
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": this_command(),
                                      "since": time.time(), "tasks": [label or tid]}).encode(), 0)
        return True

    def lock_machine(self, tid: str, exclusive: bool, label: str = "") -> bool:
        self._labels[tid] = label or tid
        if exclusive:
            self._exclusive.add(tid)
            if tid not in self._waiting:  # announce it: no new task starts meanwhile
                wfd = try_lock(self.waiting, exclusive=True)
                if wfd is None:
                    self._blocked[tid] = self.waiting
                    return False  # another benchmark waits, or a task is starting this instant
                self._waiting[tid] = wfd
                self._write_record()
        else:
            wfd = try_lock(self.waiting, exclusive=False)
            if wfd is None:
                self._blocked[tid] = self.waiting
                return False  # a benchmark waits for the machine
            os.close(wfd)
        fd = try_lock(self.machine, exclusive)
        if fd is None:
            self._blocked[tid] = self.machine
            return False
        self._machine[tid] = fd
        self._blocked.pop(tid, None)
        if self._since is None:
            self._since = time.time()
        if tid in self._waiting:
            os.close(self._waiting.pop(tid))
        self._write_record()
        return True

    def holders(self, tid: str) -> str:
        """Who holds the lock the task's last attempt found taken, in words."""
        path = self._blocked.get(tid)
        if path is None:
            return describe_holders([])
        if str(path).startswith("remote-lease:") and self.leases is not None:
            from orchestrator.store.remote import lease_holder

            lease = self.leases.holders.get(str(path).partition(":")[2])
            holder = [lease_holder(lease)] if lease else []
            return describe_holders(holder) + (
                f"; a stale lease can be broken with `deploy-build cache unlock "
                f"{str(path).partition(':')[2][:16]} --remote-cache URL`" if holder else "")
        if path.parent == self.keys_dir:
            return describe_holders(key_holder(path))
        return describe_holders(machine_holders(path.parent))

    def _write_record(self) -> None:
        """This build's record beside the machine lock (what `holders` reads), or none."""
        if not self._machine and not self._waiting:
            self._since = None
            with contextlib.suppress(OSError):
                self.record.unlink()
            return
        exclusive = bool(self._exclusive & {*self._machine, *self._waiting})
        _write_record(self.record, {
            "pid": os.getpid(), "command": this_command(),
            "since": self._since if self._since is not None else time.time(),
            "tasks": sorted(self._labels[t] for t in {*self._machine, *self._waiting}),
            "mode": "exclusive" if exclusive else "shared"})

    def release(self, tid: str) -> None:
        machine = tid in self._machine or tid in self._waiting
        if tid in self._waiting:
            os.close(self._waiting.pop(tid))
        if tid in self._machine:
            os.close(self._machine.pop(tid))
        if tid in self._keys:
            release(*self._keys.pop(tid))
            key = self._key_of.pop(tid, None)
            if self.leases is not None and key is not None:
                self.leases.release_lease(key, self.owner)
        self._blocked.pop(tid, None)
        if machine:
            self._labels.pop(tid, None)
            self._exclusive.discard(tid)
            self._write_record()

    def release_all(self) -> None:
        for tid in {*self._keys, *self._machine, *self._waiting}:
            self.release(tid)


class LockTimeout(Exception):
    """Waited past the lock timeout; the message names the holder."""


def hold_machine(locks: BuildLocks, tid: str, exclusive: bool, label: str,
                 timeout: float | None, say: Any, report_s: float = 120.0) -> None:
    """Block until ``locks`` holds the machine lock for ``tid`` (an in-process task, a paired
    re-measure), saying who holds it when the wait starts and every ``report_s``; raise
    LockTimeout past ``timeout`` seconds."""
    start = last = time.monotonic()
    said = False
    while not locks.lock_machine(tid, exclusive, label):
        now = time.monotonic()
        what = "the machine alone" if exclusive else "the machine"
        if timeout is not None and now - start >= timeout:
            holders = locks.holders(tid)
            locks.release(tid)
            raise LockTimeout(f"{label} gave up after waiting {now - start:.0f} s (--lock-timeout "
                              f"{timeout:g}) for {what}: {holders}")
        if not said or now - last >= report_s:
            said, last = True, now
            say(f"WAIT  {label}  (waiting for {what}; {locks.holders(tid)}; "
                f"waiting {now - start:.0f} s so far)")
        time.sleep(0.1)
