"""Store contract: every store implementation must pass these (parametrize `store` to add one)."""

from __future__ import annotations

import multiprocessing as mp
import os
import stat
from pathlib import Path

import pytest

from orchestrator.store.base import Blob, CorruptBlob, MissingBlob
from orchestrator.store.local import LocalStore


@pytest.fixture(params=["local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LocalStore:
    s = LocalStore(tmp_path / "cache")
    yield s
    s.close()


def test_file_roundtrip_is_read_only_and_deduplicated(store: LocalStore, tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"hello")
    b1 = store.put_file(f)
    b2 = store.put_bytes(b"hello")
    assert b1 == Blob("file", b2.digest, 5)
    p = store.blob_path(b1.digest)
    assert p.parent.name == b1.digest[:2] and p.name == b1.digest[2:]
    assert not (p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    assert store.read_bytes(b1.digest) == b"hello"
    assert store.check(b1) is None


def test_tree_roundtrip(store: LocalStore, tmp_path: Path) -> None:
    d = tmp_path / "ir"
    (d / "sub").mkdir(parents=True)
    (d / "model.xml").write_text("<xml/>")
    (d / "sub" / "model.bin").write_bytes(b"\x00" * 10)
    b = store.put_tree(d)
    assert b.kind == "tree" and b.size == 16
    dest = tmp_path / "out" / "ir"
    store.materialize(b, dest)
    assert (dest / "model.xml").read_text() == "<xml/>"
    assert (dest / "sub" / "model.bin").stat().st_nlink >= 2
    assert store.put_tree(dest) == b  # same content, same digest


def test_missing_blob(store: LocalStore) -> None:
    b = store.put_bytes(b"data")
    os.unlink(store.blob_path(b.digest))
    assert "missing" in (store.check(b) or "")
    with pytest.raises(MissingBlob):
        store.read_bytes(b.digest)
    with pytest.raises(MissingBlob):
        store.materialize(b, Path(store.root) / "x")


def test_corrupt_blob_is_reported_and_removed(store: LocalStore) -> None:
    b = store.put_bytes(b"data")
    p = store.blob_path(b.digest)
    p.chmod(0o644)
    p.write_bytes(b"evil")
    assert "corrupt" in (store.check(b) or "")
    assert not p.exists()
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"evil2")
    with pytest.raises(CorruptBlob):
        store.read_bytes(b.digest)


def test_corrupt_file_inside_tree(store: LocalStore, tmp_path: Path) -> None:
    d = tmp_path / "ir"
    d.mkdir()
    (d / "w.bin").write_bytes(b"weights")
    b = store.put_tree(d)
    inner = store.put_bytes(b"weights")
    p = store.blob_path(inner.digest)
    p.chmod(0o644)
    p.write_bytes(b"WEIGHTS")
    assert "w.bin" in (store.check(b) or "")


def test_action_entries(store: LocalStore) -> None:
    assert store.get_action("k" * 64) is None
    store.put_action("k" * 64, {"outputs": {}, "metrics": {"x": 1}})
    assert store.get_action("k" * 64) == {"outputs": {}, "metrics": {"x": 1}}


def _writer(root: str, n: int, q: mp.Queue[str]) -> None:
    s = LocalStore(root)
    payload = b"same content " * 100_000
    for i in range(n):
        b = s.put_bytes(payload)
        s.put_action("shared-key", {"outputs": {"model": b.to_json()}, "metrics": {"i": i}})
    s.close()
    q.put("ok")


def test_concurrent_writers_of_the_same_key(store: LocalStore) -> None:
    ctx = mp.get_context("spawn")
    q: mp.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(store.root), 20, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert [q.get(timeout=5) for _ in procs] == ["ok", "ok"]
    entry = store.get_action("shared-key")
    assert entry is not None
    b = Blob.from_json(entry["outputs"]["model"])
    assert store.check(b) is None
    assert store.read_bytes(b.digest) == b"same content " * 100_000
    leftovers = [p for p in store.cas.rglob(".*")]
    assert leftovers == []


def test_copies_across_file_systems_are_not_redone(store: LocalStore, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    def no_links(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    b = store.put_bytes(b"engine")
    dest = tmp_path / "out" / "model.onnx"
    store.materialize(b, dest)
    before = dest.stat().st_ino, dest.stat().st_mtime_ns
    store.materialize(b, dest)
    assert (dest.stat().st_ino, dest.stat().st_mtime_ns) == before
    dest.write_bytes(b"edited")  # touched by someone: replaced again
    store.materialize(b, dest)
    assert dest.read_bytes() == b"engine"
