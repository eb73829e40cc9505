"""orchestrator/hashing.py: canonical JSON, digests, and the one atomic write every module uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.hashing import atomic_write, canonical_json, sha256_json


def test_canonical_json_sorts_and_refuses_nan() -> None:
    assert canonical_json({"b": 1, "a": [2, 1]}) == canonical_json({"a": [2, 1], "b": 1})
    assert sha256_json({"b": 1, "a": 2}) == sha256_json({"a": 2, "b": 1})
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_atomic_write_replaces_whole_and_leaves_no_temp_file(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.json"
    atomic_write(path, "old")
    atomic_write(path, b"new" * 1_000_000)
    assert path.read_bytes() == b"new" * 1_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]

    def broken(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        atomic_write(path, "half")
    assert path.read_bytes() == b"new" * 1_000_000  # the old content, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]  # no temp file left


def test_atomic_write_never_follows_a_planted_link(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("keep")
    (tmp_path / f".f.{os.getpid()}.tmp").symlink_to(target)
    with pytest.raises(OSError):
        atomic_write(tmp_path / "f", "x")
    assert target.read_text() == "keep"
