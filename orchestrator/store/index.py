"""The keys of the local index (store/sqlindex.py), each kind built here and nowhere else.

    ac:<task key>                     an action entry (canonical JSON)
    last:<recipe>/<target>/<position> the key document a task position used last (for reasons)
    s:<path>                          stat cache of a source file: [ino, mtime_ns, size, ctime_ns, digest]
    v:<digest>                        stat of a blob verified last: [ino, mtime_ns, size, ctime_ns]
    m:<path>                          a copy the store placed outside it: [digest, ino, mtime_ns, size]
    used:<task key>                   when a build last used the entry (store/gc.py)
    stats:steps                       per-step hit and run counts (store/gc.py)
"""

from __future__ import annotations

from pathlib import Path

ACTION = "ac:"
LAST = "last:"
USED = "used:"
STATS = "stats:steps"


def action(key: str) -> str:
    return ACTION + key


def last_document(recipe: str, target: str, position: str) -> str:
    return f"{LAST}{recipe}/{target}/{position}"


def source_stat(path: Path) -> str:
    return "s:" + str(path)


def verified(digest: str) -> str:
    return "v:" + digest


def placed(dest: Path) -> str:
    return "m:" + str(dest)
