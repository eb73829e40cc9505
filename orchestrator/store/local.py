"""Local store: an SQLite index on local disk (no eviction) + sharded read-only blob files.

Layout under the cache folder::

    index/cache.db         SQLite (store/sqlindex.py): action entries ("ac:<key>"), stat
                           caches, last key documents
    cas/sha256/ab/cdef...  immutable blobs, read-only, written by temp file + os.replace
    tmp/                   task scratch folders and the temp files of blobs being written (same
                           file system as cas/); each holds a `.lock` its owner keeps flock'ed

A blob is verified when read. A stat cache (inode, mtime_ns, size, ctime_ns) remembers blobs
already verified, so an unchanged blob is not re-hashed; a blob whose stat changed is re-hashed,
and a corrupt one is deleted and reported. The ctime is what catches a write that restored the
mtime (nobody can set a ctime); the store's own hard links move it too, so it is recorded again
after each link it makes. Nothing inside the store is followed: a blob path that is a symbolic
link, a folder or anything but a regular file is removed (the link itself, never its target).

Scratch folders and blob temp files live under tmp/, each folder locked (shared) by the processes
using it for as long as they live: `sweep()` removes only folders whose lock it can take, i.e. whose
owners are gone (a build killed with -9), never a concurrent build's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat as stat_mod
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.hashing import (
    NotRegularFile,
    canonical_json,
    file_kind,
    open_regular,
    sha256_bytes,
    sha256_file,
    tree_listing,
)
from orchestrator.store import index as index_keys
from orchestrator.store.base import Blob, CorruptBlob, InvalidEntry, MissingBlob

READ_ONLY = stat_mod.S_IRUSR | stat_mod.S_IRGRP | stat_mod.S_IROTH
LOCK_NAME = ".lock"
UNLOCKED_GRACE_S = 600  # a tmp/ entry without a lock (older versions) is stale after this long


def _sig(st: os.stat_result) -> list[int]:
    """What must not change for a verified blob to stay verified without re-hashing it."""
    return [st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns]


def lock_folder(folder: Path, create: bool = True) -> int | None:
    """Take a shared lock on folder/.lock and return its fd (keep it open while using the folder).
    None when the folder (or, with create=False, its lock file) is gone, e.g. swept meanwhile."""
    lock = folder / LOCK_NAME
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    try:
        fd = os.open(lock, flags, 0o600)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.fstat(fd).st_ino != os.lstat(lock).st_ino:  # swept between open and flock
            raise FileNotFoundError(str(lock))
    except FileNotFoundError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


class LocalStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.cas = self.root / "cas" / "sha256"
        self.tmp = self.root / "tmp"
        self._index: Any = None
        self.index_reset: str | None = None  # why the index was found empty, when it was
        self._locks: dict[Path, int] = {}  # scratch folders this process holds, and their lock fds
        self._writing: Path | None = None  # this process's folder for blob temp files

    @property
    def index(self) -> Any:
        if self._index is None:
            from orchestrator.store.sqlindex import Index

            self.tmp.mkdir(parents=True, exist_ok=True)
            db = self.root / "index" / "cache.db"
            try:
                if db.stat().st_size == 0:
                    self.index_reset = f"the cache index {db} was empty (0 bytes: truncated?)"
            except FileNotFoundError:
                if (self.root / "index").is_dir() and any(self.cas.glob("??")):
                    self.index_reset = f"the cache index {db} was missing"
            self._index = Index(self.root / "index")
        return self._index

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None
        if self._writing is not None:
            shutil.rmtree(self._writing, ignore_errors=True)
            self._writing = None
        for fd in self._locks.values():
            os.close(fd)
        self._locks.clear()

    # ---- key/value metadata -------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        return self.index.get(key)

    def set_meta(self, key: str, value: Any) -> None:
        self.index.set(key, value)

    def get_action(self, key: str) -> dict[str, Any] | None:
        raw = self.index.get(index_keys.action(key))
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except (TypeError, ValueError, RecursionError):
            raise InvalidEntry(f"not JSON ({str(raw)[:40]!r})") from None
        if not isinstance(value, dict):
            raise InvalidEntry(f"not a JSON object ({str(raw)[:40]!r})")
        return value

    def put_action(self, key: str, entry: dict[str, Any]) -> None:
        self.index.set(index_keys.action(key), canonical_json(entry))

    def delete_action(self, key: str) -> None:
        """Drop an action entry (cache verify, for one that names a missing or corrupt blob)."""
        self.index.delete(index_keys.action(key))

    # ---- blobs ----------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.cas / digest[:2] / digest[2:]

    def put_file(self, path: Path, known: tuple[str, int] | None = None) -> Blob:
        """Store a file. ``known``: its (digest, size) from a stat cache (sources.StatCache), so
        an unchanged file is not hashed again."""
        digest, size = known if known is not None else (sha256_file(path), path.stat().st_size)
        self._write(digest, lambda tmp: shutil.copyfile(path, tmp))
        return Blob("file", digest, size)

    def put_bytes(self, data: bytes) -> Blob:
        digest = sha256_bytes(data)
        self._write(digest, lambda tmp: Path(tmp).write_bytes(data))
        return Blob("file", digest, len(data))

    def _write(self, digest: str, fill: Callable[[str], object]) -> None:
        """Store a blob unless it is there intact: fill a temp file, make it read-only, move it
        into place (a link in its place is replaced, not followed; a folder removed)."""
        dest = self.blob_path(digest)
        if self._intact(dest, digest):
            return
        self._shard(dest)
        tmp = self._tmp_name(dest)
        try:
            fill(tmp)
            os.chmod(tmp, READ_ONLY)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._remember(dest, digest)

    def put_tree(self, path: Path, known: Callable[[Path], tuple[str, int]] | None = None) -> Blob:
        """Store a folder file by file, and its listing. ``known``: a file's (digest, size) from
        a stat cache, as for put_file."""
        def put(p: Path) -> tuple[str, int]:
            b = self.put_file(p, known(p) if known is not None else None)
            return b.digest, b.size

        listing, total = tree_listing(path, put)
        return Blob("tree", self.put_bytes(listing).digest, total)

    def read_bytes(self, digest: str) -> bytes:
        p = self.blob_path(digest)
        try:
            with open_regular(p, follow=False) as f:
                data = f.read()
        except (FileNotFoundError, NotADirectoryError):
            raise MissingBlob(digest) from None
        except NotRegularFile:
            self._discard(p)
            raise CorruptBlob(f"{digest} (not a regular file)") from None
        if sha256_bytes(data) != digest:
            self._discard(p)
            raise CorruptBlob(digest)
        return data

    def tree_files(self, digest: str) -> dict[str, tuple[str, int]]:
        try:
            listing = json.loads(self.read_bytes(digest))
            return {str(rel): (str(d), int(s)) for rel, (d, s) in listing["files"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CorruptBlob(f"tree listing {digest[:12]} is not a tree listing") from None

    def check(self, blob: Blob) -> str | None:
        if blob.kind == "file":
            return self._check_file(blob.digest)
        problem = self._check_file(blob.digest)
        if problem:
            return f"tree listing {problem}"
        try:
            files = self.tree_files(blob.digest)
        except CorruptBlob as e:
            return str(e)
        for rel, (d, _) in files.items():
            problem = self._check_file(d)
            if problem:
                return f"{rel}: {problem}"
        return None

    def is_placed(self, digest: str, dest: Path) -> bool:
        """True when dest is this blob: a hard link to it, or an untouched copy this store made."""
        try:
            if os.path.samefile(self.blob_path(digest), dest):
                return True
            st = dest.stat()
        except OSError:
            return False
        return bool(self.index.get(index_keys.placed(dest)) == [digest, st.st_ino, st.st_mtime_ns,
                                                          st.st_size])

    def remember_placed(self, digest: str, dest: Path) -> None:
        """After a copy this store made was moved to dest (a target folder swapped in)."""
        with contextlib.suppress(OSError):
            if not os.path.samefile(self.blob_path(digest), dest):
                st = dest.stat()
                self.index.set(index_keys.placed(dest), [digest, st.st_ino, st.st_mtime_ns, st.st_size])

    def ensure(self, blob: Blob) -> None:
        """Here a blob is local or missing: nothing to fetch (the tiered store downloads)."""

    def materialize(self, blob: Blob, dest: Path) -> None:
        if blob.kind == "file":
            self._place(blob.digest, dest)
            return
        if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
            _remove(dest)
        dest.mkdir(parents=True, exist_ok=True)
        files = self.tree_files(blob.digest)
        for rel, (d, _) in files.items():  # files already linked to their blob are left alone
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            self._place(d, target)
        for p in sorted(dest.rglob("*"), reverse=True):  # what the tree no longer holds
            rel = p.relative_to(dest).as_posix()
            # another build may be tidying the same folder: what is gone already is fine
            with contextlib.suppress(FileNotFoundError, OSError):
                if p.is_dir() and not p.is_symlink():
                    if not any(p.iterdir()):
                        p.rmdir()
                elif rel not in files and not p.name.startswith("."):
                    p.unlink(missing_ok=True)

    # ---- scratch, temp files and the sweep ------------------------------------------------
    def scratch(self, prefix: str) -> Path:
        """A fresh folder on the cache's file system for one task's work, locked by this
        process until it is removed (or the process ends)."""
        self._release_removed()
        while True:
            self.tmp.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp))
            fd = lock_folder(folder)
            if fd is not None:
                self._locks[folder] = fd
                return folder

    def _release_removed(self) -> None:
        for folder in [f for f in self._locks if not f.is_dir()]:
            os.close(self._locks.pop(folder))

    def sweep(self) -> tuple[int, int]:
        """Remove what killed processes left under tmp/ (scratch folders whose lock can be taken,
        unlocked leftovers of older versions after a grace period) and hidden temp files in cas/
        older than the grace period. Returns (entries removed, bytes freed)."""
        removed, freed = 0, 0
        cutoff = time.time() - UNLOCKED_GRACE_S
        try:
            entries = list(os.scandir(self.tmp))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    fd = None
                    try:
                        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
                    except FileNotFoundError:
                        if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                            continue  # being created this instant, or recent: not ours to judge
                    if fd is not None:
                        try:
                            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        except BlockingIOError:
                            os.close(fd)
                            continue  # its owner is alive
                    try:
                        from orchestrator.host.procs import kill_leftovers

                        kill_leftovers(path)  # processes a killed build's step started
                        freed += _size(path)
                        shutil.rmtree(path, ignore_errors=True)
                    finally:
                        if fd is not None:
                            os.close(fd)
                    removed += 1
                elif entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    freed += entry.stat(follow_symlinks=False).st_size
                    os.unlink(path)
                    removed += 1
            except OSError:
                continue  # gone meanwhile, or not ours to remove: the next sweep tries again
        with contextlib.suppress(FileNotFoundError):
            for shard in os.scandir(self.cas):
                if not shard.is_dir(follow_symlinks=False):
                    continue
                for f in os.scandir(shard.path):
                    with contextlib.suppress(OSError):
                        st = f.stat(follow_symlinks=False)
                        if f.name.startswith(".") and st.st_mtime < cutoff:
                            os.unlink(f.path)
                            removed += 1
                            freed += st.st_size
        return removed, freed

    # ---- internals ------------------------------------------------------------------------
    def _check_file(self, digest: str) -> str | None:
        p = self.blob_path(digest)
        try:
            shard = os.lstat(p.parent)
            if not stat_mod.S_ISDIR(shard.st_mode):  # a link (or file) planted as a shard
                self._discard(p.parent)
                return f"blob {digest[:12]} missing"
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            return f"blob {digest[:12]} missing"
        if not stat_mod.S_ISREG(st.st_mode):
            self._discard(p)
            return f"blob {digest[:12]} is a {file_kind(st.st_mode)}, not a file (removed)"
        if not self._intact(p, digest):
            self._discard(p)
            return f"blob {digest[:12]} corrupt (removed)"
        return None

    def _place(self, digest: str, dest: Path) -> None:
        src = self.blob_path(digest)
        problem = self._check_file(digest)
        if problem:
            raise CorruptBlob(problem) if "missing" not in problem else MissingBlob(problem)
        with contextlib.suppress(FileNotFoundError):
            if os.path.samefile(src, dest):
                return
            st = dest.stat()  # a copy this store made earlier (another file system) and untouched
            if self.index.get(index_keys.placed(dest)) == [digest, *_sig(st)]:
                return
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_dir() and not dest.is_symlink():
            _remove(dest)
        # link beside it, then rename over it: readers never see the file missing
        tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
        try:
            os.link(src, tmp)
            copied = False
        except OSError:
            shutil.copyfile(src, tmp)
            copied = True
        os.replace(tmp, dest)
        if copied:
            st = dest.stat()
            self.index.set(index_keys.placed(dest), [digest, *_sig(st)])
        else:  # the new link moved the blob's ctime: it was verified just now, record it again
            self._remember(src, digest)

    def _intact(self, path: Path, digest: str) -> bool:
        """True when path is a regular file holding digest; uses the stat cache to avoid
        re-hashing (a changed inode, size, mtime or ctime means re-hashing)."""
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if not stat_mod.S_ISREG(st.st_mode):
            return False
        sig = _sig(st)
        if self.index.get(index_keys.verified(digest)) == sig:
            return True
        try:
            if sha256_file(path, follow=False) != digest:
                return False
        except (FileNotFoundError, NotRegularFile):
            return False
        with contextlib.suppress(FileNotFoundError):
            if _sig(os.lstat(path)) == sig:  # unchanged while it was hashed
                self.index.set(index_keys.verified(digest), sig)
        return True

    def _remember(self, path: Path, digest: str) -> None:
        self.index.set(index_keys.verified(digest), _sig(os.lstat(path)))

    def _discard(self, path: Path) -> None:
        """Remove what sits at a blob path without following it: a link goes, not its target."""
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            if stat_mod.S_ISDIR(os.lstat(path).st_mode):
                shutil.rmtree(path)
            else:
                os.unlink(path)

    def _shard(self, dest: Path) -> None:
        """Make dest's shard folder a real folder, and clear a folder planted at dest."""
        with contextlib.suppress(FileNotFoundError):
            if not stat_mod.S_ISDIR(os.lstat(dest.parent).st_mode):
                self._discard(dest.parent)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat_mod.S_ISDIR(os.lstat(dest).st_mode):
                self._discard(dest)

    def _tmp_name(self, dest: Path) -> str:
        """A temp file for a blob being written, in this process's locked folder under tmp/:
        whatever a killed writer leaves there is swept."""
        if self._writing is None or not self._writing.is_dir():
            self._writing = self.scratch(f"w{os.getpid()}-")
        fd, name = tempfile.mkstemp(prefix=f".{dest.name[:16]}.", dir=self._writing)
        os.close(fd)
        return name


def _size(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
