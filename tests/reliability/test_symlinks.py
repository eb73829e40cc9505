"""Item 4 (issue 8 #6): links planted in the cache are never followed: the file they point at keeps
its mode and content, and the entry is rebuilt."""

from __future__ import annotations

import os
import stat

from conftest import FAKE_RECIPE, Project
from helpers import action_key

from orchestrator.store.local import LocalStore


def test_blob_replaced_by_a_symlink_is_discarded_without_touching_its_target(project: Project,
                                                                             capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    key = action_key(project.build_json(r, capsys), "b/2:fake-const")
    outside = project.root / "secret.txt"
    outside.write_text("do not touch")
    os.chmod(outside, 0o600)
    store = LocalStore(project.cache)
    entry = store.get_action(key)
    assert entry is not None
    blob = store.blob_path(entry["outputs"]["model"]["digest"])
    store.close()
    os.unlink(blob)
    os.symlink(outside, blob)
    s = project.build_json(r, capsys)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600
    assert outside.read_text() == "do not touch"
    assert s["rc"] == 0
    assert s["by_label"]["b/2:fake-const"]["status"] == "run"
    assert "not a file" in s["by_label"]["b/2:fake-const"]["reasons"][0]
    assert not blob.is_symlink() and blob.read_text() == "hello"
    assert (project.out / "demo/b/model.txt").read_text() == "hello"


def test_shard_folder_replaced_by_a_symlink(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    key = action_key(project.build_json(r, capsys), "b/2:fake-const")
    store = LocalStore(project.cache)
    entry = store.get_action(key)
    assert entry is not None
    shard = store.blob_path(entry["outputs"]["model"]["digest"]).parent
    store.close()
    elsewhere = project.root / "elsewhere"
    os.rename(shard, elsewhere)
    os.symlink(elsewhere, shard)
    before = sorted((p.name, p.stat().st_mode) for p in elsewhere.iterdir())
    s = project.build_json(r, capsys)
    assert s["rc"] == 0 and s["by_label"]["b/2:fake-const"]["status"] == "run"
    assert not shard.is_symlink() and shard.is_dir()
    assert sorted((p.name, p.stat().st_mode) for p in elsewhere.iterdir()) == before
