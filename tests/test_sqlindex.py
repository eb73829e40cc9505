"""The local index (store/sqlindex.py): values, transactions, threads and processes, an index
from a newer version, and the conversion of an index written by diskcache (earlier versions)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest
from conftest import FAKE_RECIPE, Project

from orchestrator.store.local import LocalStore
from orchestrator.store.sqlindex import Index, NewerIndex


def test_values_round_trip_and_keys_come_sorted(tmp_path: Path) -> None:
    ix = Index(tmp_path / "index")
    values = {"ac:b": '{"outputs":{}}', "s:/x": [1, 2, 3, "ab"], "last:r/t/1": {"a": [1, {"b": None}]},
              "used:k": 1733200000, "f": 0.5}
    for k, v in values.items():
        ix.set(k, v)
    assert {k: ix.get(k) for k in values} == values
    assert list(ix.iterkeys()) == sorted(values) and "f" in ix and len(ix) == len(values)
    assert ix.get("nope") is None and ix.get("nope", 7) == 7
    assert ix.delete("f") and not ix.delete("f")
    ix._con.execute("UPDATE kv SET value = '{torn' WHERE key = 'used:k'")  # damaged on disk
    assert ix.get("used:k") is None  # as if absent: the caller rebuilds or re-hashes
    ix.close()
    again = Index(tmp_path / "index")
    assert again.get("last:r/t/1") == values["last:r/t/1"]
    again.close()


def test_a_transaction_that_raises_leaves_nothing(tmp_path: Path) -> None:
    ix = Index(tmp_path / "index")
    ix.set("keep", 1)
    with pytest.raises(RuntimeError), ix.transact():
        ix.set("keep", 2)
        with ix.transact():  # nested: joins the outer one
            ix.set("new", 3)
        raise RuntimeError("stop")
    assert ix.get("keep") == 1 and ix.get("new") is None
    with ix.transact():
        ix.set("new", 3)
    assert ix.get("new") == 3
    ix.close()


def _writer(folder: str, n: int) -> None:
    ix = Index(Path(folder))
    for i in range(50):
        with ix.transact():
            ix.set(f"p{n}-{i}", i)
            ix.set("counter", (ix.get("counter") or 0) + 1)
    ix.close()


def test_threads_and_processes_share_one_index_without_losing_writes(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    ix = Index(folder)

    def thread(n: int) -> None:
        for i in range(50):
            with ix.transact():
                ix.set(f"t{n}-{i}", i)
                ix.set("counter", (ix.get("counter") or 0) + 1)

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(folder), n)) for n in range(3)]
    threads = [threading.Thread(target=thread, args=(n,)) for n in range(3)]
    for w in [*procs, *threads]:
        w.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert ix.get("counter") == 6 * 50 and len(ix) == 6 * 50 + 1
    ix.close()


def test_an_index_from_a_newer_version_is_refused_with_what_to_do(
        project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    folder = project.cache / "index"
    Index(folder).close()
    con = sqlite3.connect(folder / "cache.db")
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.raises(NewerIndex):
        Index(folder)
    assert project.run(str(project.recipe(FAKE_RECIPE))) == 1
    err = capsys.readouterr().err
    assert "written by a newer deploy-build" in err and "Traceback" not in err


def test_an_index_written_by_diskcache_is_converted_and_nothing_rebuilds(
        project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    """deploy-build before December 2026 kept its index with diskcache (values pickled, large
    ones in files beside it). The first open converts it in place: every entry is kept."""
    diskcache = pytest.importorskip("diskcache")
    r = project.recipe(FAKE_RECIPE)
    assert project.run(str(r)) == 0
    store = LocalStore(project.cache)
    old = {k: store.index.get(k) for k in store.index.iterkeys()}
    store.close()
    big = "x" * 100_000  # stored by diskcache in a file of its own
    for f in (project.cache / "index").iterdir():
        f.unlink()
    dc = diskcache.Cache(str(project.cache / "index"), eviction_policy="none", size_limit=2**62,
                         cull_limit=0, statistics=False)
    for k, v in old.items():
        dc.set(k, v)
    dc.set("big", big)
    dc.set("ac:" + "f" * 64, {"not": "a str"})  # a value this tool never wrote: kept as is
    dc.close()
    assert len(list((project.cache / "index").rglob("*.val"))) == 1
    capsys.readouterr()
    assert project.run(str(r), "--json") == 0
    out = capsys.readouterr().out
    assert '"status": "run"' not in out  # every task a hit: the entries survived
    store = LocalStore(project.cache)
    assert store.index.get("big") == big
    entries = {k: v for k, v in old.items() if k.startswith("ac:")}
    assert entries and {k: store.index.get(k) for k in entries} == entries
    store.close()
    con = sqlite3.connect(project.cache / "index" / "cache.db")
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    con.close()
    assert tables == {"kv"}
    assert list((project.cache / "index").rglob("*.val")) == []  # diskcache's value files
