"""Canonical JSON, sha256 of bytes, files and folders.

Keys and digests are plain lowercase sha256 hex strings.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys, no whitespace and no NaN: the same value always gives the same text."""
    return _CANONICAL.encode(value)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(value: Any) -> str:
    return sha256_bytes(canonical_json(value).encode())


class NotRegularFile(OSError):
    """A path that had to be a regular file is a FIFO, device, socket, folder or (unfollowed) link."""


def file_kind(mode: int) -> str:
    """What a stat mode is, in words (for error messages)."""
    for test, name in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "folder"),
                       (stat.S_ISLNK, "symbolic link"), (stat.S_ISFIFO, "FIFO (named pipe)"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def open_regular(path: str | os.PathLike[str], follow: bool = True) -> io.BufferedReader:
    """Open a regular file for reading, never blocking on a FIFO or a device: the open is
    non-blocking and anything but a regular file raises NotRegularFile. With follow=False a
    symbolic link is refused too (O_NOFOLLOW)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow:
            raise NotRegularFile(errno.ELOOP, "is a symbolic link", str(path)) from None
        if e.errno in (errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP):  # a socket, a device
            mode = (os.stat if follow else os.lstat)(path).st_mode
            raise NotRegularFile(e.errno, f"is a {file_kind(mode)}, not a regular file",
                                 str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, f"is a {file_kind(st.st_mode)}, not a regular file",
                                 str(path))
        os.set_blocking(fd, True)
        return io.open(fd, "rb")  # noqa: UP020 - typed as a BufferedReader
    except BaseException:
        os.close(fd)
        raise


def sha256_file(path: str | os.PathLike[str], follow: bool = True) -> str:
    """The file's sha256, read in chunks (never whole into memory); regular files only."""
    with open_regular(path, follow) as f:
        # file_digest reads with a large buffer and releases the GIL.
        return hashlib.file_digest(f, "sha256").hexdigest()


def tree_listing(root: Path, file_digest: Callable[[Path], tuple[str, int]]) -> tuple[bytes, int]:
    """A folder as a tree: the JSON listing of relpath -> [digest, size] (what a tree blob holds;
    its sha256 is the tree's digest) and the total size. ``file_digest`` gives a file's (digest,
    size): hashed through a stat cache for a source, stored on the way for an output."""
    files: dict[str, list[Any]] = {}
    total = 0
    for rel, p in walk_files(root):
        digest, size = file_digest(p)
        files[rel] = [digest, size]
        total += size
    return canonical_json({"files": files}).encode(), total


def walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Files under root as (posix relpath, path), sorted, skipping hidden entries (.git, .cache)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            yield p.relative_to(root).as_posix(), p


def atomic_write(path: str | os.PathLike[str], data: str | bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` all at once: written to a temp file beside it (this
    process's own name, never followed if it is a link) and renamed into place, so a reader sees
    the old content or the new, never half; the temp file goes if the write fails."""
    dest = Path(path)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            _write_all(fd, raw)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_all(fd: int, raw: bytes) -> None:
    view = memoryview(raw)
    while view:
        view = view[os.write(fd, view):]
