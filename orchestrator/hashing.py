"""Canonical JSON, sha256 of bytes, files and folders.

Keys and digests are plain lowercase sha256 hex strings.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
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


def sha256_file(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        # file_digest reads with a large buffer and releases the GIL.
        return hashlib.file_digest(f, "sha256").hexdigest()


def walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Files under root as (posix relpath, path), sorted, skipping hidden entries (.git, .cache)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            yield p.relative_to(root).as_posix(), p
