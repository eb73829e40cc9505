"""Item 3 (issue 8 #5): a bad index row (not JSON, the wrong shape, a folder where a blob should be)
is a miss, reported once, and rebuilt, for build, --dry-run and explain."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import FAKE_RECIPE, Project
from helpers import action_key

from orchestrator.store.local import LocalStore

LABEL = "b/2:fake-const"


def _corrupt(project: Project, key: str, how: str) -> None:
    store = LocalStore(project.cache)
    try:
        if how == "garbage":
            store.index.set("ac:" + key, "garbage{")
        elif how == "outputs-5":
            store.index.set("ac:" + key, '{"outputs": 5}')
        elif how == "no-doc":
            entry = store.get_action(key)
            assert entry is not None
            del entry["doc"]
            store.put_action(key, entry)
        elif how == "folder-for-blob":
            entry = store.get_action(key)
            assert entry is not None
            p = store.blob_path(entry["outputs"]["model"]["digest"])
            os.unlink(p)
            (p / "sub").mkdir(parents=True)
        elif how == "last-doc-garbage":
            store.delete_action(key)
            for k in list(store.index.iterkeys()):
                if k.startswith("last:"):
                    store.set_meta(k, 5 if k.endswith("fake-const") else {"params": 5, "inputs": 7})
    finally:
        store.close()


@pytest.mark.parametrize("how", ["garbage", "outputs-5", "no-doc", "folder-for-blob"])
def test_bad_entry_is_a_miss_reported_once_and_rebuilt(project: Project, capsys, how: str) -> None:
    r = project.recipe(FAKE_RECIPE)
    first = project.build_json(r, capsys)
    key = action_key(first, LABEL)
    _corrupt(project, key, how)
    capsys.readouterr()
    assert project.run(str(r), "--dry-run") == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if LABEL in ln)
    assert line.strip().startswith("RUN") and line.count("cache entry invalid") == 1, out
    assert out.count("cache entry invalid") == 1
    assert project.run("explain", str(r)) == 0
    assert capsys.readouterr().out.count("cache entry invalid") == 1
    s = project.build_json(r, capsys)
    assert s["rc"] == 0
    assert s["by_label"][LABEL]["status"] == "run"
    assert s["by_label"][LABEL]["reasons"][0].startswith("cache entry invalid")
    assert (project.out / "demo/b/model.txt").read_text() == "hello"
    assert {t["status"] for t in project.build_json(r, capsys)["tasks"]} == {"hit"}


def test_garbage_last_document_is_ignored(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    key = action_key(project.build_json(r, capsys), LABEL)
    _corrupt(project, key, "last-doc-garbage")
    capsys.readouterr()
    assert project.run(str(r), "--dry-run") == 0
    assert "RUN   b/2:fake-const  (new)" in capsys.readouterr().out
    project.recipe(FAKE_RECIPE.replace('suffix: "!"', 'suffix: "?"'))  # reasons read the documents
    assert project.run(str(r), "--dry-run") == 0
    assert "RUN   a/2:fake-tree  (" in capsys.readouterr().out
    assert project.build_json(r, capsys)["rc"] == 0


def test_cache_verify_removes_bad_entries(project: Project, capsys) -> None:
    from orchestrator.cli import main

    r = project.recipe(FAKE_RECIPE)
    key = action_key(project.build_json(r, capsys), LABEL)
    _corrupt(project, key, "garbage")
    capsys.readouterr()
    assert main(["cache", "verify", "--cache", str(project.cache)]) == 2
    assert "not JSON" in capsys.readouterr().err
    store = LocalStore(project.cache)
    assert store.index.get("ac:" + key) is None
    store.close()
    shutil.rmtree(project.out)
    assert project.build_json(r, capsys)["by_label"][LABEL]["status"] == "run"
