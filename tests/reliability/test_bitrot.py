"""Item 2 (issue 8 #4): a flipped byte with its mtime restored is caught (the fingerprint holds the
ctime), in a blob and through the hard link in build/; `cache verify` re-hashes everything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import FAKE_RECIPE, Project


def flip_keep_mtime(path: Path, offset: int = 0) -> None:
    """Flip one byte in place (same inode) and put the mtime back, as rot or a careless tool might."""
    st = path.stat()
    fd = os.open(path, os.O_RDWR)  # root: the read-only mode does not stop it
    try:
        byte = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte[0] ^ 0x20]), offset)
    finally:
        os.close(fd)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


def test_flipped_byte_in_a_materialized_file_is_caught_and_rebuilt(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    assert project.build_json(r, capsys)["rc"] == 0
    engine = project.out / "demo/b/model.txt"
    part = project.out / "demo/a/ir/part0.bin"
    good_part = part.read_bytes()
    flip_keep_mtime(engine)  # a hard link to the blob: the blob rotted too
    flip_keep_mtime(part)  # a file inside a tree output
    s = project.build_json(r, capsys)
    assert s["rc"] == 0
    for label in ("b/2:fake-const", "a/2:fake-tree"):
        assert s["by_label"][label]["status"] == "run", label
        assert s["by_label"][label]["reasons"][0].startswith("cache entry invalid"), s["by_label"][label]
    assert engine.read_text() == "hello"
    assert part.read_bytes() == good_part
    again = project.build_json(r, capsys)  # and the repair holds: a no-op is all hits
    assert {t["status"] for t in again["tasks"]} == {"hit"}


def test_cache_verify_rehashes_everything(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    assert project.build_json(r, capsys)["rc"] == 0
    from orchestrator.cli import main

    capsys.readouterr()
    assert main(["cache", "verify", "--cache", str(project.cache)]) == 0
    out = capsys.readouterr().out
    assert "0 corrupt blob(s) removed, 0 action entries removed" in out
    flip_keep_mtime(project.out / "demo/b/model.txt")
    assert main(["cache", "verify", "--cache", str(project.cache)]) == 2
    captured = capsys.readouterr()
    assert "1 corrupt blob(s) removed, 1 action entry removed" in captured.out
    assert "corrupt" in captured.err
    assert main(["cache", "verify", "--cache", str(project.cache)]) == 0  # clean now
    s = project.build_json(r, capsys)
    assert s["by_label"]["b/2:fake-const"]["status"] == "run"
    assert (project.out / "demo/b/model.txt").read_text() == "hello"


@pytest.mark.parametrize("how", ["truncate", "delete", "empty", "flip"])
def test_a_corrupt_blob_is_detected_reported_once_repaired_never_served(project: Project, capsys,
                                                                       how: str) -> None:
    """Each way a blob goes bad: the entry naming it is a miss (reported once, with why), the task
    reruns, and build/ holds the right bytes again; a second build is all hits."""
    import json

    from orchestrator.store.local import LocalStore

    r = project.recipe(FAKE_RECIPE)
    assert project.build_json(r, capsys)["rc"] == 0
    engine = project.out / "demo/b/model.txt"
    digest = json.loads((project.out / "demo/b/manifest.json").read_text())["artifacts"][0]["digest"]
    store = LocalStore(project.cache)
    blob = store.blob_path(digest)
    store.close()
    assert blob.is_file() and blob.stat().st_ino == engine.stat().st_ino
    if how == "truncate":
        os.truncate(blob, 2)
    elif how == "empty":
        os.truncate(blob, 0)
    elif how == "delete":
        blob.unlink()
    else:
        flip_keep_mtime(blob)
    capsys.readouterr()
    s = project.build_json(r, capsys)
    err = capsys.readouterr().err
    assert s["rc"] == 0
    task = s["by_label"]["b/2:fake-const"]
    assert task["status"] == "run" and task["reasons"][0].startswith("cache entry invalid"), task
    assert err.count("cache entry invalid") <= 1  # said once, not per lookup
    assert engine.read_text() == "hello" and blob.read_text() == "hello"
    again = project.build_json(r, capsys)
    assert {t["status"] for t in again["tasks"]} == {"hit"}
