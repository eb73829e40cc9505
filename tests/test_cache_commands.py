"""`deploy-build cache ls|stats|gc|verify|push|pull` on real caches (a shared folder and S3 on
loopback as remotes)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import FAKE_RECIPE, Project
from remote_helpers import remote_url, s3_endpoint  # noqa: F401

from orchestrator.cli import main


def _project(root: Path) -> Project:
    root.mkdir()
    return Project(root)


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    capsys.readouterr()
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def test_stats_and_ls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _project(tmp_path / "p")
    r = p.recipe(FAKE_RECIPE)
    assert p.run(str(r)) == 0
    assert p.run(str(r)) == 0
    stats = _json(capsys, "cache", "stats", "--cache", str(p.cache), "--json")["steps"]
    assert stats["fake-upper"]["hit"] == 1 and stats["fake-upper"]["run"] == 1
    assert stats["fake-upper"]["hit_rate"] == 0.5 and stats["fake-upper"]["entries"] == 1
    assert stats["fake-tree"]["bytes"] > 0 and stats["fake-tree"]["remote_hit"] == 0
    rows = _json(capsys, "cache", "ls", "--cache", str(p.cache), "--json")["entries"]
    assert sorted(r["step"] for r in rows) == ["fake-const", "fake-length", "fake-tree", "fake-upper"]


def test_gc_keeps_what_manifests_reach_and_removes_the_rest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.store.gc import GRACE_S, collect, local_entries
    from orchestrator.store.local import LocalStore

    p = _project(tmp_path / "p")
    r = p.recipe(FAKE_RECIPE)
    assert p.run(str(r)) == 0
    r.write_text(FAKE_RECIPE.replace('suffix: "!"', 'suffix: "?"'))  # every task changes
    assert p.run(str(r)) == 0
    assert main(["cache", "gc", "--cache", str(p.cache), "--max-size", "0",
                 "--keep", str(p.out)]) == 0
    assert "4 action entries" in capsys.readouterr().err  # the old build's: no manifest names them
    s = p.build_json(r, capsys)
    assert {t["status"] for t in s["tasks"]} == {"hit"}, s["err"]
    store = LocalStore(p.cache)
    blobs_before = sum(1 for _ in store.cas.rglob("*") if _.is_file())
    report = collect(store, None, None, set(), now=time.time() + 2 * GRACE_S)
    assert report.entries_removed == 0 and report.blobs_removed > 0  # the old build's blobs
    assert blobs_before - report.blobs_removed > 0
    store.close()
    s = p.build_json(r, capsys)
    assert {t["status"] for t in s["tasks"]} == {"hit"}, s["err"]  # nothing needed was removed
    assert main(["cache", "gc", "--cache", str(p.cache), "--max-age", "0s"]) == 0
    store = LocalStore(p.cache)
    assert list(local_entries(store)) == []
    store.close()
    assert main(["cache", "gc", "--cache", str(p.cache)]) == 1  # needs a limit


@pytest.mark.parametrize("kind", ["folder", "s3"])
def test_push_then_pull_on_another_machine(kind: str, tmp_path: Path,
                                           request: pytest.FixtureRequest,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    url = remote_url(kind, tmp_path, request)
    one, two = _project(tmp_path / "one"), _project(tmp_path / "two")
    assert one.run(str(one.recipe(FAKE_RECIPE)), "--remote-cache", "none") == 0
    assert main(["cache", "push", "--cache", str(one.cache), "--remote-cache", url]) == 0
    assert "4 action entries" in capsys.readouterr().err
    rows = _json(capsys, "cache", "ls", "--cache", str(one.cache), "--remote-cache", url,
                 "--json")["entries"]
    assert len(rows) == 4 and all(r["remote"] for r in rows)
    assert main(["cache", "pull", "--cache", str(two.cache), "--remote-cache", url]) == 0
    assert "4 action entries" in capsys.readouterr().err
    s = two.build_json(two.recipe(FAKE_RECIPE), capsys, "--remote-cache", "none")
    assert {t["status"] for t in s["tasks"]} == {"hit"}, s["err"]


def test_verify_extends_to_the_remote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shared = tmp_path / "shared"
    one = _project(tmp_path / "one")
    assert one.run(str(one.recipe(FAKE_RECIPE)), "--remote-cache", shared.as_uri()) == 0
    args = ["cache", "verify", "--cache", str(one.cache), "--remote-cache", shared.as_uri()]
    assert main(args) == 0
    capsys.readouterr()
    from orchestrator.store.gc import entry_step, local_entries
    from orchestrator.store.local import LocalStore

    store = LocalStore(one.cache)
    entry = next(e for _, e in local_entries(store) if entry_step(e) == "fake-upper")
    store.close()
    assert entry is not None
    digest = entry["outputs"]["model"]["digest"]
    tree_file = shared / "cas" / "sha256" / digest[:2] / digest[2:]
    tree_file.write_bytes(b"rotten")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "remote blob" in err and "corrupt" in err and "remote action entry" in err
    assert not tree_file.exists()
    assert main(args) == 0  # what was bad is gone; the rest is intact


def test_gc_of_the_remote_keeps_what_builds_still_use(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import os

    from orchestrator.store.gc import GRACE_S
    from orchestrator.store.remote import Remote
    from orchestrator.store.remote_gc import collect_remote

    shared = tmp_path / "shared"
    url = shared.as_uri()
    one = _project(tmp_path / "one")
    r = one.recipe(FAKE_RECIPE)
    assert one.run(str(r), "--remote-cache", url) == 0
    r.write_text(FAKE_RECIPE.replace('suffix: "!"', 'suffix: "?"'))
    assert one.run(str(r), "--remote-cache", url) == 0
    assert len(list(shared.glob("ac/*"))) == 8
    old = time.time() - 10 * 86400  # all of it written ten days ago
    for f in [*shared.glob("ac/*"), *shared.glob("packs/*")]:
        os.utime(f, (old, old))
    r.write_text(FAKE_RECIPE)
    assert one.run(str(r), "--remote-cache", url) == 0  # "!" used today (local hits): its pack
    report = collect_remote(Remote(url), None, 86400.0, set())
    assert report.entries_removed == 4 and len(list(shared.glob("ac/*"))) == 4  # the "?" ones
    assert len(list(shared.glob("packs/*"))) == 1  # the old packs went with them
    two = _project(tmp_path / "two")
    s = two.build_json(two.recipe(FAKE_RECIPE), capsys, "--remote-cache", url)
    assert {t["status"] for t in s["tasks"]} == {"hit"}, s["err"]
    report = collect_remote(Remote(url), 0, None, set(), now=time.time() + 2 * GRACE_S)
    assert report.entries_removed == 4 and report.blobs_removed > 0
    assert not list(shared.glob("ac/*"))
    assert main(["cache", "gc", "--cache", str(two.cache), "--max-age", "30d",
                 "--remote-cache", url]) == 0
    assert "cache gc: remote" in capsys.readouterr().err
