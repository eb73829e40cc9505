"""The store contract across machines, for the local store, a shared folder and S3 (moto on
loopback): what one machine stores, another reads, verified; plus what only a remote has
(signing, modes, leases, an unreachable remote)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from remote_helpers import free_port, open_tiered, remote_url, s3_endpoint  # noqa: F401

from orchestrator.plan import usable_entry
from orchestrator.store.base import ActionEntry, Blob, CorruptBlob, MissingBlob
from orchestrator.store.local import LocalStore

KEY = "a" * 64


class Backend:
    """Machines sharing one cache: the same local folder ("local"), or each its own local cache
    in front of one remote ("folder", "s3")."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.tmp = tmp_path
        self.url = None if kind == "local" else remote_url(kind, tmp_path, request)
        self.opened: list[LocalStore] = []

    def machine(self, name: str, **kw: Any) -> Any:
        if self.url is None:
            s = LocalStore(self.tmp / "cache")
        else:
            s = open_tiered(self.tmp / name, self.url, **kw)
        self.opened.append(s)
        return s

    def _remote_fs(self) -> Any:
        return self.opened[0].remote.fs  # type: ignore[attr-defined]

    def remove_blob(self, writer: Any, digest: str) -> None:
        if self.url is None:
            writer.blob_path(digest).unlink()
        else:
            self._remote_fs().rm(writer.remote.blob_path(digest))

    def overwrite_blob(self, writer: Any, digest: str, data: bytes) -> None:
        if self.url is None:
            p = writer.blob_path(digest)
            p.chmod(0o644)
            p.write_bytes(data)
        else:
            writer.remote._write(writer.remote.blob_path(digest), data)


@pytest.fixture(params=["local", "folder", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    b = Backend(request.param, tmp_path, request)
    yield b
    for s in b.opened:
        s.close()


def _write(store: Any, tmp_path: Path) -> dict[str, Any]:
    f = tmp_path / "engine.onnx"
    f.write_bytes(b"engine bytes")
    d = tmp_path / "ir"
    (d / "sub").mkdir(parents=True, exist_ok=True)
    (d / "model.xml").write_text("<xml/>")
    (d / "sub" / "model.bin").write_bytes(b"\x01" * 100)
    fb, tb = store.put_file(f), store.put_tree(d)
    log = store.put_bytes(b"the log")
    entry = {"outputs": {"model": {**fb.to_json(), "filename": "engine.onnx"},
                         "ir": {**tb.to_json(), "filename": "ir/"}},
             "metrics": {"nodes": 3}, "warnings": [], "log": log.digest, "doc": {"step": "x"}}
    store.put_action(KEY, entry)
    return entry


def test_what_one_machine_stores_another_reads(backend: Backend, tmp_path: Path) -> None:
    a = backend.machine("a")
    entry = _write(a, tmp_path)
    b = backend.machine("b")
    assert b.get_action("b" * 64) is None
    assert b.get_action(KEY) == entry
    got, why = usable_entry(b, KEY)
    assert got == ActionEntry.from_json(entry) and why is None
    fb = Blob.from_json(entry["outputs"]["model"])
    tb = Blob.from_json(entry["outputs"]["ir"])
    assert b.read_bytes(fb.digest) == b"engine bytes"
    dest = tmp_path / "out" / "ir"
    b.materialize(tb, dest)
    assert (dest / "model.xml").read_text() == "<xml/>"
    assert (dest / "sub" / "model.bin").read_bytes() == b"\x01" * 100
    assert b.check(tb) is None and LocalStore.check(b, tb) is None  # now local on b as well


def test_a_missing_blob_makes_the_entry_a_miss(backend: Backend, tmp_path: Path) -> None:
    a = backend.machine("a")
    entry = _write(a, tmp_path)
    fb = Blob.from_json(entry["outputs"]["model"])
    backend.remove_blob(a, fb.digest)
    b = backend.machine("b")
    got, why = usable_entry(b, KEY)
    assert got is None and "missing" in (why or "")
    with pytest.raises(MissingBlob):
        b.read_bytes(fb.digest)


def test_a_blob_whose_bytes_do_not_match_is_refused(backend: Backend, tmp_path: Path) -> None:
    a = backend.machine("a")
    entry = _write(a, tmp_path)
    fb = Blob.from_json(entry["outputs"]["model"])
    backend.overwrite_blob(a, fb.digest, b"poisoned engine")
    b = backend.machine("b")
    with pytest.raises(CorruptBlob):
        b.read_bytes(fb.digest)
    with pytest.raises((CorruptBlob, MissingBlob)):
        b.materialize(fb, tmp_path / "out" / "engine.onnx")
    assert not (tmp_path / "out" / "engine.onnx").exists()
    assert not b.blob_path(fb.digest).exists()  # never kept
    if backend.url is not None:
        assert any("does not match its digest" in r for r in b.refused)


def test_an_entry_is_written_after_its_blobs(backend: Backend, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if backend.url is None:
        pytest.skip("one local index: no order to watch")
    a = backend.machine("a")
    written: list[str] = []
    orig = a.remote._write
    monkeypatch.setattr(a.remote, "_write", lambda p, d: (written.append(p), orig(p, d)))
    _write(a, tmp_path)
    assert written[-1].endswith("/ac/" + KEY)
    assert len([p for p in written if "/cas/" in p]) == 5  # file, listing, 2 tree files, log


# ---- remote only -------------------------------------------------------------------------------
@pytest.fixture(params=["folder", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Any]:
    url = remote_url(request.param, tmp_path, request)
    opened: list[Any] = []

    def machine(name: str, **kw: Any) -> Any:
        s = open_tiered(tmp_path / name, url, **kw)
        opened.append(s)
        return s

    yield machine
    for s in opened:
        s.close()


def test_readers_with_the_key_refuse_unsigned_and_foreign_entries(remote: Any, tmp_path: Path) -> None:
    _write(remote("unsigned-writer"), tmp_path)
    strict = remote("strict", key=b"team-secret")
    got, why = usable_entry(strict, KEY)
    assert got is None and "unsigned" in (why or "")
    _write(remote("intruder", key=b"another-key"), tmp_path)
    got, why = usable_entry(remote("strict2", key=b"team-secret"), KEY)
    assert got is None and "signed with another key" in (why or "")
    entry = _write(remote("ci", key=b"team-secret"), tmp_path)
    assert usable_entry(remote("strict3", key=b"team-secret"), KEY)[0] == ActionEntry.from_json(entry)
    assert usable_entry(remote("keyless-reader"), KEY)[0] == ActionEntry.from_json(entry)


def test_modes(remote: Any, tmp_path: Path) -> None:
    reader = remote("laptop", mode="read")
    _write(reader, tmp_path)
    assert remote("other").get_action(KEY) is None  # a read-only machine never writes
    entry = _write(remote("ci", mode="write"), tmp_path)
    assert remote("writer2", mode="write").get_action(KEY) is None  # write mode never reads
    assert remote("reader2", mode="read").get_action(KEY) == entry


def test_a_remote_hit_is_kept_locally(remote: Any, tmp_path: Path) -> None:
    entry = _write(remote("a"), tmp_path)
    b = remote("b")
    for out in entry["outputs"].values():
        b.ensure(Blob.from_json(out))
    b.get_action(KEY)
    b.close()
    local = LocalStore(tmp_path / "b")
    assert usable_entry(local, KEY)[0] == ActionEntry.from_json(entry)
    local.close()


def test_leases_keep_other_builds_out_until_released_or_expired(remote: Any) -> None:
    r = remote("a").remote
    assert r.lease(KEY, "build-1")
    assert not r.lease(KEY, "build-2")
    r.release_lease(KEY, "build-2")  # not the holder: nothing happens
    assert not r.lease(KEY, "build-2")
    r.release_lease(KEY, "build-1")
    assert r.lease(KEY, "build-2")
    assert r.lease("c" * 64, "build-3", ttl_s=-1)  # already expired: anyone may take it over
    assert r.lease("c" * 64, "build-4")


def test_of_builds_asking_for_one_lease_at_once_exactly_one_gets_it(remote: Any) -> None:
    """The race CI once lost: two builds both read "no lease", both wrote theirs, both read their
    own back and both built the task. The lease is now created only where none exists."""
    import threading

    machines = [remote(f"m{i}").remote for i in range(6)]
    for round_ in range(6):
        key = f"{round_:x}" * 64
        if round_ == 5 and not machines[0].is_local:  # a store without conditional writes
            for r in machines:
                r._conditional_put = False
        start = threading.Barrier(len(machines))
        won: list[str] = []

        def ask(r: Any, owner: str, key: str = key, start: threading.Barrier = start,
                won: list[str] = won) -> None:
            start.wait()
            if r.lease(key, owner):
                won.append(owner)

        threads = [threading.Thread(target=ask, args=(r, f"build-{i}"))
                   for i, r in enumerate(machines)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, (round_, won)
        assert machines[0].disabled is None


@pytest.mark.usefixtures("s3_endpoint")
def test_an_unreachable_remote_degrades_to_local_only_with_one_warning(tmp_path: Path) -> None:
    from orchestrator.store.remote import Remote
    from orchestrator.store.tiered import TieredStore

    said: list[str] = []
    dead = f"http://127.0.0.1:{free_port()}"
    r = Remote("s3://nowhere/cache", "readwrite", None,
               {"endpoint_url": dead, "skip_instance_cache": True}, log=said.append)
    r.probe()
    s = TieredStore(tmp_path / "c", r)
    entry = _write(s, tmp_path)
    assert s.get_action(KEY) == entry and s.get_action("d" * 64) is None
    assert len(said) == 1 and "unusable" in said[0] and "local cache only" in said[0]
    s.close()


def test_a_build_leaves_a_pack_that_saves_the_next_machine_its_lookups(
        remote: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = remote("a")
    entry = _write(a, tmp_path)
    other = {**entry, "metrics": {"nodes": 4}}
    a.put_action("e" * 64, other)
    a.close()  # leaves packs/<digest>.json with both entries
    b = remote("b")
    asked: list[str] = []
    orig = b.remote.get_entries
    monkeypatch.setattr(b.remote, "get_entries", lambda keys: (asked.extend(keys), orig(keys))[1])
    b._packed = b.remote.read_packs()
    assert sorted(b._packed) == [KEY, "e" * 64]
    assert b.get_action(KEY) == entry and b.get_action("e" * 64) == other
    assert asked == []
    # a pack is only a faster way to the same objects: an object filed under another key is refused
    c = remote("c")
    c._packed = {KEY: c.remote.read_packs()["e" * 64]}
    got, why = usable_entry(c, KEY)
    assert got is None and "names key eeeeeeeeeeee" in (why or "")
