"""Say what failed on a full, read-only or forbidden disk, and where (never "delete the index").

Only the standard library: the command line maps such errors to a message without importing more.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Any

HINTS = {
    errno.ENOSPC: "the disk is full: free some space",
    errno.EDQUOT: "the disk quota is used up: free some space",
    errno.EROFS: "the file system is read-only: use a writable folder",
    errno.EACCES: "no permission: check the folder's owner and mode, or use another folder",
    errno.EPERM: "not permitted: check the folder's owner and mode, or use another folder",
    errno.EFBIG: "a file size limit stops the write (ulimit -f?): raise it",
    errno.EIO: "the disk reported an I/O error: check the device",
}
# sqlite result codes that mean "could not write or open", not "the file is damaged"
SQLITE_ENVIRONMENT = {"SQLITE_FULL", "SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CANTOPEN",
                      "SQLITE_PERM", "SQLITE_BUSY", "SQLITE_LOCKED"}
SQLITE_DAMAGED = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


def describe(e: OSError) -> str:
    """`No space left on device [ENOSPC] (path); hint`."""
    code = errno.errorcode.get(e.errno or 0, "")
    what = e.strerror or str(e)
    where = f" ({e.filename})" if e.filename else ""
    hint = HINTS.get(e.errno or 0)
    return f"{what}{f' [{code}]' if code else ''}{where}{f'; {hint}' if hint else ''}"


def probe_write(folder: Path, sync: bool = True) -> OSError | None:
    """Try to create, write (and, with sync, fsync: a full disk or quota shows only then on some
    file systems) and remove a small file in folder: the error that stops it, or None. Ctrl-C
    and SIGTERM wait until the probe file is gone again; probe files of killed commands go."""
    from orchestrator.host.signals import signals_held

    sweep_probes(folder)
    with signals_held():
        return _probe(folder, sync)


def _probe(folder: Path, sync: bool) -> OSError | None:
    try:
        fd, name = tempfile.mkstemp(prefix=f".probe-{os.getpid()}-", dir=folder)
    except OSError as e:
        if not e.filename:
            e.filename = str(folder)
        return e
    try:
        os.write(fd, b"x" * 4096)
        if sync:
            os.fsync(fd)
    except OSError as e:
        e.filename = e.filename or str(folder)
        return e
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)
    return None


def sweep_probes(folder: Path) -> None:
    """Remove probe files a killed command left in folder (its pid is in the name)."""
    try:
        names = [n for n in os.listdir(folder) if n.startswith(".probe-")]
    except OSError:
        return
    for name in names:
        pid = name.split("-")[1] if name.count("-") >= 2 else ""
        if not pid.isdigit() or int(pid) == os.getpid() or _gone(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(folder / name)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def environment_error(exc: BaseException) -> str | None:
    """A message for an error that the disk or its permissions caused (not a bug), else None."""
    if isinstance(exc, OSError) and exc.errno in HINTS:
        return f"a write or read failed: {describe(exc)}"
    if type(exc).__module__ == "sqlite3":
        name: Any = getattr(exc, "sqlite_errorname", "") or ""
        if "_".join(str(name).split("_")[:2]) in SQLITE_ENVIRONMENT:
            return (f"the cache index could not be written: {exc} [{name}] (a full disk, a "
                    "read-only or forbidden folder); the index itself is not damaged")
    return None
