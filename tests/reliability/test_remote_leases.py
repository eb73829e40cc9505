"""Issue 18, items 3 and 4, on a real S3 API on loopback (moto's server) and a shared folder: a
forged lease cannot stall builds, a waiting build names the lease's holder, `cache unlock` breaks
a stale one, and a reader without the signing key is told its remote entries are unverified."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import FAKE_RECIPE, Project
from remote_helpers import open_tiered, remote_url, s3_endpoint  # noqa: F401 - the fixture

KEY = "f" * 64


@pytest.fixture(params=["folder", "s3"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return remote_url(request.param, tmp_path, request)


def _forge(store: Any, key: str, expires: float) -> None:
    """A lease object written by someone else, claiming to last until ``expires``."""
    r = store.remote
    r._write(r.lease_path(key), json.dumps({"owner": "forger", "expires": expires,
                                            "host": "evil", "pid": 1}).encode())


def test_a_forged_lease_is_honoured_no_longer_than_the_tool_would_write_one(
        url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.store import remote as remote_module

    store = open_tiered(tmp_path / "me", url)
    try:
        _forge(store, KEY, expires=time.mktime((2100, 1, 1, 0, 0, 0, 0, 0, 0)))
        assert not store.remote.lease(KEY, "me")  # fresh: honoured for now
        assert store.remote.holders[KEY]["host"] == "evil"
        # an hour later (by this machine's clock), a lease "until 2100" is long past what this
        # tool writes (LEASE_TTL_S plus the clock skew allowance): taken over
        later = time.time() + 3600
        monkeypatch.setattr(remote_module.time, "time", lambda: later)
        assert store.remote.lease(KEY, "me")
    finally:
        store.close()


def test_cache_unlock_breaks_a_lease_and_names_its_holder(
        url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli import main

    store = open_tiered(tmp_path / "me", url)
    try:
        assert store.remote.lease(KEY, "someone")
        capsys.readouterr()
        assert main(["cache", "unlock", KEY[:12], "--cache", str(tmp_path / "c"),
                     "--remote-cache", url]) == 0
        err = capsys.readouterr().err
        assert f"removed the lease on {KEY[:16]} held by pid {os.getpid()} on " in err, err
        assert store.remote.lease(KEY, "me")  # free now
        assert main(["cache", "unlock", "0123", "--cache", str(tmp_path / "c"),
                     "--remote-cache", url]) == 2
    finally:
        store.close()


def test_a_build_waiting_for_a_remote_lease_names_its_holder(
        project: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = (tmp_path / "shared").as_uri()
    monkeypatch.setenv("DEPLOY_BUILD_REMOTE_CACHE", url)
    r = project.recipe(FAKE_RECIPE)
    capsys.readouterr()
    assert project.run(str(r), "--dry-run", "--json") == 0
    keys = {t["label"]: t["key"] for t in json.loads(capsys.readouterr().out)["tasks"]}
    other = open_tiered(tmp_path / "other", url)
    try:
        assert other.remote.lease(keys["a/1:fake-upper"], "another machine's build")
        capsys.readouterr()
        rc = project.run(str(r), "--lock-timeout", "3")
        err = capsys.readouterr().err
    finally:
        other.close()
    assert rc == 2
    wait = next(x for x in err.splitlines() if x.startswith("WAIT  a/1:fake-upper"))
    assert f"held by pid {os.getpid()} on " in wait and " since " in wait, wait
    assert "deploy-build cache unlock" in wait


def test_a_reader_without_the_signing_key_is_warned_once_per_build(
        url: str, tmp_path: Path) -> None:
    """Documented, but silent at run time before: a reader without the key serves whatever
    entries the remote holds. Now it says so, once per build."""
    said: list[str] = []
    writer = open_tiered(tmp_path / "w", url, key=b"team-key")
    for key in (KEY, "e" * 64):
        writer.put_action(key, _entry(writer))
    writer.close()
    reader = open_tiered(tmp_path / "r", url, log=said.append)
    try:
        assert reader.get_action(KEY) is not None  # served, unverified
        assert reader.get_action("e" * 64) is not None
    finally:
        reader.close()
    warned = [s for s in said if "are not verified" in s]
    assert len(warned) == 1 and "DEPLOY_BUILD_CACHE_SIGNING_KEY" in warned[0], said
    signed = open_tiered(tmp_path / "s", url, key=b"team-key", log=said.append)
    try:
        assert signed.get_action(KEY) is not None
    finally:
        signed.close()
    assert len([s for s in said if "are not verified" in s]) == 1  # the key holder: no warning


def _entry(store: Any) -> dict[str, Any]:
    blob = store.put_bytes(b"hello")
    return {"outputs": {"model": {**blob.to_json(), "filename": "m.txt"}}, "metrics": {},
            "warnings": [], "log": store.put_bytes(b"log").digest, "doc": {"step": "x"}}


