"""The store interface. Local and remote stores implement it and pass the same contract tests."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class Blob:
    """A stored output: a single file, or a tree (a folder, stored as a JSON listing blob)."""

    kind: Literal["file", "tree"]
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "digest": self.digest, "size": self.size}

    @staticmethod
    def from_json(d: dict[str, Any]) -> Blob:
        return Blob(d["kind"], d["digest"], int(d["size"]))


@dataclass(frozen=True)
class ActionEntry:
    """An action cache entry as the build reads it (the store holds its JSON, ``to_json``): what a
    successful task left. Read back through ``plan.usable_entry``, which checks its shape first."""

    outputs: dict[str, dict[str, Any]]  # output name -> blob JSON (kind, digest, size), filename
    metrics: dict[str, Any]
    warnings: list[str]
    log: str | None  # digest of the task's log blob
    doc: dict[str, Any]  # the key document the key was made of

    def to_json(self) -> dict[str, Any]:
        return {"outputs": self.outputs, "metrics": self.metrics, "warnings": self.warnings,
                "log": self.log, "doc": self.doc}

    @staticmethod
    def from_json(d: dict[str, Any]) -> ActionEntry:
        """From a JSON object already checked (store.base.entry_problem)."""
        log = d.get("log")
        return ActionEntry(d["outputs"], d["metrics"], d["warnings"],
                           log if isinstance(log, str) else None, d["doc"])


class Store(Protocol):
    """What the planner and the build loop use. The worker process writes output blobs into the
    local store it is given; a remote store (a later issue) uploads them from there, blobs first
    and the action entry last, and verifies digests on download."""

    root: Path

    def get_meta(self, key: str) -> Any:
        """Small index values: stat caches and the last key document per task position."""

    def set_meta(self, key: str, value: Any) -> None: ...

    def scratch(self, prefix: str) -> Path:
        """A fresh folder on the store's file system for one task's work."""

    def get_action(self, key: str) -> dict[str, Any] | None:
        """The action entry for key, or None; raises InvalidEntry when the stored value cannot be
        decoded (its shape is checked by the planner: plan.usable_entry)."""

    def put_action(self, key: str, entry: dict[str, Any]) -> None:
        """Record an action entry. Call only after every blob it names is stored."""

    def put_file(self, path: Path, known: tuple[str, int] | None = None) -> Blob: ...

    def put_tree(self, path: Path) -> Blob: ...

    def put_bytes(self, data: bytes) -> Blob: ...

    def read_bytes(self, digest: str) -> bytes:
        """The blob's bytes, verified against its digest (raises CorruptBlob / MissingBlob)."""

    def check(self, blob: Blob) -> str | None:
        """None when the blob (and, for a tree, every file in it) is present and intact; else why not."""

    def materialize(self, blob: Blob, dest: Path) -> None:
        """Place the blob at dest (hard link, falling back to copy); a tree becomes a folder."""

    def ensure(self, blob: Blob) -> None:
        """Make the blob (a tree: every file in it) readable at blob_path: a store in front of a
        remote downloads what it lacks; the local store has it or it is missing."""


class BlobError(Exception):
    pass


class MissingBlob(BlobError):
    pass


class CorruptBlob(BlobError):
    pass


class InvalidEntry(Exception):
    """An action entry that cannot be used (not JSON, or not the shape the build reads)."""


_DIGEST = re.compile(r"[0-9a-f]{64}")


def entry_problem(entry: dict[str, Any]) -> str | None:
    """Why an action entry read from the index is not the shape the build reads; None if it is.
    The one place entries are validated: a bad row is a miss (and is rebuilt), never a crash."""
    outputs = entry.get("outputs")
    if not isinstance(outputs, dict):
        return f"'outputs' is {type(outputs).__name__}, not a mapping"
    for name, b in outputs.items():
        if not (isinstance(b, dict) and b.get("kind") in ("file", "tree")
                and isinstance(b.get("digest"), str) and _DIGEST.fullmatch(b["digest"])
                and type(b.get("size")) is int and b["size"] >= 0
                and isinstance(b.get("filename"), str)):
            return f"output {name!r} is malformed"
    for field_name, tp in (("metrics", dict), ("warnings", list), ("doc", dict)):
        if not isinstance(entry.get(field_name), tp):
            return f"{field_name!r} is missing or not a {tp.__name__}"
    return None
