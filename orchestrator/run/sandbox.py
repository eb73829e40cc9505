"""Keep a step's hands off its inputs.

A task's inputs are hard links into the cache: a step that wrote into one would change the stored
blob under every task and recipe that uses it. The worker makes them read-only for the step:

- where the process may (root, as in CI and containers), a private mount namespace with a
  read-only bind mount of each input file: a write fails at once with EROFS, and the blob is
  untouched. Folders stay writable (tools such as ONNX Runtime's quantizer write scratch files
  beside their input);
- elsewhere the blobs' own read-only mode stops accidental writes.

Either way the worker compares the inputs' (size, mtime) before and after the step, so a write
that got through fails the task, and the cache re-hashes the blob before it serves it again. (Not
the ctime: another task linking the same blob moves it.)
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18

Snapshot = dict[str, tuple[int, int]]


MAX_FILES = 512  # past this, only the after-the-fact comparison guards the inputs


def read_only(files: list[str]) -> bool:
    """Make ``files`` read-only for this process and its children; False where not permitted."""
    if not files or len(files) > MAX_FILES or os.name != "posix":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    if libc.unshare(CLONE_NEWNS) != 0:
        return False
    # private: our mounts must not propagate back to the machine's namespace
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False
    for p in files:
        target = os.fsencode(p)
        if libc.mount(target, target, None, MS_BIND | MS_REC, None) != 0:
            return False
        if libc.mount(b"none", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None) != 0:
            return False
    return True


def snapshot(paths: list[Path]) -> Snapshot:
    """(size, mtime_ns) of every file under paths."""
    out: Snapshot = {}
    for root in paths:
        files = [root] if not root.is_dir() else [p for p in root.rglob("*") if p.is_file()]
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            out[str(f)] = (st.st_size, st.st_mtime_ns)
    return out


def changed(before: Snapshot, after: Snapshot) -> list[str]:
    return sorted(p for p, sig in before.items() if after.get(p, sig) != sig)


def input_of(path: str, inputs: dict[str, Path]) -> str | None:
    """The name of the input that path is (or is inside of)."""
    for name, p in inputs.items():
        if path == str(p) or path.startswith(str(p) + os.sep):
            return name
    return None


def is_write_to(e: BaseException, inputs: dict[str, Path]) -> str | None:
    """The input a failed write went to, else None: EROFS / EACCES / EPERM under an input, or
    EBUSY from renaming a file over a read-only input (``os.replace(tmp, input)``: the input is
    the error's second file name)."""
    codes = (errno.EROFS, errno.EACCES, errno.EPERM, errno.EBUSY)
    if not isinstance(e, OSError) or e.errno not in codes:
        return None
    for name in (e.filename, e.filename2):
        if isinstance(name, str) and (found := input_of(name, inputs)) is not None:
            return found
    return None
