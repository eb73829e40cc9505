"""Local store: diskcache index on local disk (no eviction) + sharded read-only blob files.

Layout under the cache folder::

    index/                 diskcache: action entries ("ac:<key>"), stat caches, last key documents
    cas/sha256/ab/cdef...  immutable blobs, read-only, written by temp file + os.replace
    tmp/                   temp files and task scratch folders (same file system as cas/)

A blob is verified when read. A stat cache (inode, mtime_ns, size) remembers blobs already
verified, so an unchanged blob is not re-hashed; a blob whose stat changed is re-hashed, and a
corrupt one is deleted and reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat as stat_mod
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.hashing import canonical_json, sha256_bytes, sha256_file, walk_files
from orchestrator.store.base import Blob, CorruptBlob, MissingBlob

READ_ONLY = stat_mod.S_IRUSR | stat_mod.S_IRGRP | stat_mod.S_IROTH


class LocalStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.cas = self.root / "cas" / "sha256"
        self.tmp = self.root / "tmp"
        self._index: Any = None

    @property
    def index(self) -> Any:
        if self._index is None:
            import diskcache

            self.tmp.mkdir(parents=True, exist_ok=True)
            self._index = diskcache.Cache(
                str(self.root / "index"), eviction_policy="none", size_limit=2**62,
                cull_limit=0, statistics=False,
            )
        return self._index

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    # ---- key/value metadata -------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        return self.index.get(key)

    def set_meta(self, key: str, value: Any) -> None:
        self.index.set(key, value)

    def get_action(self, key: str) -> dict[str, Any] | None:
        raw = self.index.get("ac:" + key)
        return json.loads(raw) if raw is not None else None

    def put_action(self, key: str, entry: dict[str, Any]) -> None:
        self.index.set("ac:" + key, canonical_json(entry))

    def delete_action(self, key: str) -> None:
        self.index.delete("ac:" + key)

    # ---- blobs ----------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.cas / digest[:2] / digest[2:]

    def put_file(self, path: Path) -> Blob:
        digest = sha256_file(path)
        size = path.stat().st_size
        dest = self.blob_path(digest)
        if not self._intact(dest, digest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._tmp_name(dest)
            try:
                shutil.copyfile(path, tmp)
                os.chmod(tmp, READ_ONLY)
                os.replace(tmp, dest)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            self._remember(dest, digest)
        return Blob("file", digest, size)

    def put_bytes(self, data: bytes) -> Blob:
        digest = sha256_bytes(data)
        dest = self.blob_path(digest)
        if not self._intact(dest, digest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._tmp_name(dest)
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.chmod(tmp, READ_ONLY)
                os.replace(tmp, dest)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            self._remember(dest, digest)
        return Blob("file", digest, len(data))

    def put_tree(self, path: Path) -> Blob:
        files: dict[str, list[Any]] = {}
        total = 0
        for rel, p in walk_files(path):
            b = self.put_file(p)
            files[rel] = [b.digest, b.size]
            total += b.size
        listing = self.put_bytes(canonical_json({"files": files}).encode())
        return Blob("tree", listing.digest, total)

    def read_bytes(self, digest: str) -> bytes:
        p = self.blob_path(digest)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise MissingBlob(digest) from None
        if sha256_bytes(data) != digest:
            self._discard(p)
            raise CorruptBlob(digest)
        return data

    def tree_files(self, digest: str) -> dict[str, tuple[str, int]]:
        listing = json.loads(self.read_bytes(digest))
        return {rel: (d, int(s)) for rel, (d, s) in listing["files"].items()}

    def check(self, blob: Blob) -> str | None:
        if blob.kind == "file":
            return self._check_file(blob.digest)
        problem = self._check_file(blob.digest)
        if problem:
            return f"tree listing {problem}"
        for rel, (d, _) in self.tree_files(blob.digest).items():
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
        return bool(self.index.get("m:" + str(dest)) == [digest, st.st_ino, st.st_mtime_ns,
                                                          st.st_size])

    def remember_placed(self, digest: str, dest: Path) -> None:
        """After a copy this store made was moved to dest (a target folder swapped in)."""
        with contextlib.suppress(OSError):
            if not os.path.samefile(self.blob_path(digest), dest):
                st = dest.stat()
                self.index.set("m:" + str(dest), [digest, st.st_ino, st.st_mtime_ns, st.st_size])

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

    # ---- internals ------------------------------------------------------------------------
    def _check_file(self, digest: str) -> str | None:
        p = self.blob_path(digest)
        if not p.exists():
            return f"blob {digest[:12]} missing"
        if not self._intact(p, digest):
            self._discard(p)
            return f"blob {digest[:12]} corrupt (removed)"
        return None

    def _place(self, digest: str, dest: Path) -> None:
        src = self.blob_path(digest)
        problem = self._check_file(digest)
        if problem:
            raise CorruptBlob(problem) if "corrupt" in problem else MissingBlob(problem)
        with contextlib.suppress(FileNotFoundError):
            if os.path.samefile(src, dest):
                return
            st = dest.stat()  # a copy this store made earlier (another file system) and untouched
            if self.index.get("m:" + str(dest)) == [digest, st.st_ino, st.st_mtime_ns, st.st_size]:
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
            self.index.set("m:" + str(dest), [digest, st.st_ino, st.st_mtime_ns, st.st_size])

    def _intact(self, path: Path, digest: str) -> bool:
        """True when path holds digest; uses the stat cache to avoid re-hashing."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        sig = [st.st_ino, st.st_mtime_ns, st.st_size]
        if self.index.get("v:" + digest) == sig:
            return True
        if sha256_file(path) != digest:
            return False
        self.index.set("v:" + digest, sig)
        return True

    def _remember(self, path: Path, digest: str) -> None:
        st = path.stat()
        self.index.set("v:" + digest, [st.st_ino, st.st_mtime_ns, st.st_size])

    def _discard(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path, 0o644)
            os.unlink(path)

    def _tmp_name(self, dest: Path) -> str:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name[:16]}.", dir=dest.parent)
        os.close(fd)
        return name

    def scratch(self, prefix: str) -> Path:
        """A fresh folder on the cache's file system for one task's work."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
