"""Issue 18 item 2: `deploy-build verify DIR` walks the target folder itself (lstat, links never
followed) and refuses what a build never makes: hidden entries, empty folders, links, FIFOs, files
the manifest does not list. `--against` a committed manifest (a file or a git revision) catches an
engine swapped together with the digest in the folder's own manifest; an engine after a step that
is not byte-reproducible reads "not comparable" there, not as a failure."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import FAKE_RECIPE, Project
from helpers import run_cli

from orchestrator.cli import main


class Built:
    """One build of FAKE_RECIPE (a: a folder output ir/, b: a file model.txt) with its committed
    manifests under manifests/, and copies of its target folders (a serving host's)."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.manifests = project.root / "manifests"
        recipe = project.recipe(FAKE_RECIPE)
        assert project.run(str(recipe), "--manifests", str(self.manifests)) == 0

    def host(self, target: str) -> Path:
        dest = self.project.root / "host" / target
        shutil.copytree(self.project.out / "demo" / target, dest)  # copies, not links to the cache
        return dest

    def committed(self, target: str) -> Path:
        return self.manifests / "demo" / f"{target}.json"


@pytest.fixture
def built(project: Project) -> Built:
    return Built(project)


def verify(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["verify", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def edit(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, sort_keys=True, indent=2) + "\n")


def test_clean_folders_verify_ok(built: Built, capsys) -> None:
    for target in ("a", "b"):
        folder = built.project.out / "demo" / target
        for extra in ([], ["--against", str(built.committed(target))],
                      ["--against", str(built.manifests)]):
            rc, out, _ = verify(capsys, folder, *extra)
            assert rc == 0, out
            assert f"demo/{target}: ok" in out
            assert "not checked: manifest.json (the manifest itself" in out
            assert "run-log.json (the build's volatile facts" in out
    rc, out, _ = verify(capsys, built.host("a"))
    assert rc == 0, out


@pytest.mark.parametrize("rel", [".evil.py", "tokenizer/.hidden", "ir/.hidden", "ir/sub/.x",
                                 ".git/config"])
def test_a_hidden_file_anywhere_is_refused(built: Built, capsys, rel: str) -> None:
    host = built.host("a")
    (host / rel).parent.mkdir(parents=True, exist_ok=True)
    (host / rel).write_text("import os\n")
    rc, out, _ = verify(capsys, host)
    assert rc == 2
    hidden = next(p for p in Path(rel).parts if p.startswith("."))
    shown = rel[:rel.index(hidden) + len(hidden)]
    assert f"FAIL demo/a: {shown}: a hidden " in out
    assert "remove it" in out


@pytest.mark.parametrize("rel", ["extra", "ir/extra", "ir/sub/deeper/still"])
def test_an_extra_empty_folder_is_refused(built: Built, capsys, rel: str) -> None:
    host = built.host("a")
    (host / rel).mkdir(parents=True)
    rc, out, _ = verify(capsys, host)
    assert rc == 2
    assert f"FAIL demo/a: {rel}/: an empty folder; a build makes none: remove it" in out


@pytest.mark.parametrize("rel", ["conf/etc", "etc", "ir/etc"])
def test_a_link_to_etc_is_refused_not_followed(built: Built, capsys, rel: str) -> None:
    host = built.host("a")
    (host / rel).parent.mkdir(parents=True, exist_ok=True)
    os.symlink("/etc", host / rel)
    rc, out, _ = verify(capsys, host)
    assert rc == 2
    assert f"FAIL demo/a: {rel}: a symbolic link to /etc;" in out
    assert "passwd" not in out  # never walked into


@pytest.mark.parametrize(("target", "rel"), [("b", "model.txt"), ("a", "ir/part0.bin"),
                                             ("a", "ir/sub/meta.txt")])
def test_a_link_replacing_a_listed_file_is_refused(built: Built, capsys, target: str,
                                                   rel: str) -> None:
    """The link points at the very same bytes: following it, the digests would all match."""
    host = built.host(target)
    same = built.project.root / "same-bytes"
    shutil.copy(host / rel, same)
    os.unlink(host / rel)
    os.symlink(same, host / rel)
    rc, out, _ = verify(capsys, host)
    assert rc == 2
    assert f"FAIL demo/{target}: {rel}: a symbolic link to {same};" in out


def test_the_manifest_itself_as_a_link_is_refused(built: Built, capsys) -> None:
    host = built.host("b")
    elsewhere = built.project.root / "elsewhere.json"
    shutil.copy(host / "manifest.json", elsewhere)
    os.unlink(host / "manifest.json")
    os.symlink(elsewhere, host / "manifest.json")
    rc, out, _ = verify(capsys, host)
    assert rc == 2
    assert "manifest.json: is a symbolic link" in out
    rc, out, _ = verify(capsys, host, "--against", built.committed("b"))
    assert rc == 2
    assert "manifest.json: is a symbolic link" in out


@pytest.mark.parametrize("rel", ["pipe", "ir/pipe", "sock"])
def test_fifos_and_sockets_are_refused_without_blocking(built: Built, capsys, rel: str) -> None:
    host = built.host("a")
    if rel == "sock":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(host / rel))
        s.close()
    else:
        os.mkfifo(host / rel)
    p = run_cli("verify", str(host), timeout=60)  # a subprocess: a FIFO opened would block
    assert p.returncode == 2, p.stdout + p.stderr
    kind = "socket" if rel == "sock" else "FIFO (named pipe)"
    assert f"FAIL demo/a: {rel}: a {kind}, not a regular file" in p.stdout


def test_a_manifest_path_outside_the_folder_is_refused(built: Built, capsys) -> None:
    host = built.host("b")
    outside = built.project.root / "host" / "outside.txt"
    outside.write_text("secret")
    digest = __import__("hashlib").sha256(b"secret").hexdigest()
    edit(host / "manifest.json", lambda m: m["artifacts"].append(
        {"name": "x", "path": "../outside.txt", "kind": "file", "digest": digest, "size": 6}))
    rc, out, _ = verify(capsys, host)
    assert rc == 2
    assert "the manifest lists an unsafe path '../outside.txt'" in out


def _swap_engine(host: Path) -> None:
    """Other bytes for b's engine, their digest and size written into the folder's manifest."""
    import hashlib

    evil = b"EVIL ENGINE"
    (host / "model.txt").write_bytes(evil)
    digest = hashlib.sha256(evil).hexdigest()

    def change(m: dict[str, Any]) -> None:
        m["artifacts"][0].update(digest=digest, size=len(evil))
        m["steps"][-1]["outputs"]["model"].update(digest=digest, size=len(evil))

    edit(host / "manifest.json", change)


def test_a_swapped_engine_is_caught_against_the_committed_manifest(built: Built, capsys) -> None:
    host = built.host("b")
    _swap_engine(host)
    rc, out, _ = verify(capsys, host)
    assert rc == 0, out  # the folder's own manifest agrees with it: the limit --against lifts
    rc, out, _ = verify(capsys, host, "--against", built.committed("b"))
    assert rc == 2
    ref = built.committed("b")
    assert f"FAIL demo/b: model.txt: 11 bytes, the reviewed manifest ({ref}) says 5;" in out
    assert (f"FAIL demo/b: manifest.json differs from the reviewed manifest ({ref}) at "
            "artifacts.0.digest, artifacts.0.size, steps.1.outputs.model.digest") in out
    assert "deploy the reviewed build" in out
    rc, out, _ = verify(capsys, host, "--against", built.manifests)
    assert rc == 2 and "model.txt: 11 bytes" in out
    rc, out, _ = verify(capsys, built.host("a"), "--against", ref)
    assert rc == 2 and "manifest.json is the manifest of demo/a, the reviewed one" in out


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          cwd=root, capture_output=True, text=True, check=True, timeout=60)
    return done.stdout


@pytest.mark.parametrize("tracked", ["manifests", "build/demo/b/manifest.json"])
def test_against_a_git_revision(built: Built, capsys, monkeypatch, tracked: str) -> None:
    root = built.project.root
    _git(root, "init", "-q")
    _git(root, "add", tracked)
    _git(root, "commit", "-q", "-m", "reviewed")
    monkeypatch.chdir(root)
    host = built.host("b")
    rc, out, _ = verify(capsys, host, "--against", "HEAD")
    assert rc == 0, out
    where = "HEAD:manifests/demo/b.json" if tracked == "manifests" else f"HEAD:{tracked}"
    assert f"demo/b: ok (1 file(s) and folder(s) checked against {where})" in out
    _swap_engine(host)
    rc, out, _ = verify(capsys, host, "--against", "HEAD")
    assert rc == 2
    assert f"FAIL demo/b: model.txt: 11 bytes, the reviewed manifest ({where}) says 5;" in out
    assert f"manifest.json differs from the reviewed manifest ({where}) at artifacts.0.digest" in out
    if tracked != "manifests":
        rc, _, err = verify(capsys, built.host("a"), "--against", "HEAD")
        assert rc == 1
        assert "no manifest of demo/a tracked at revision HEAD" in err
    rc, _, err = verify(capsys, host, "--against", "no-such-rev")
    assert rc == 1 and "not a git revision" in err
    rc, _, err = verify(capsys, root / "nowhere")
    assert rc == 1 and "is not a folder" in err
    rc, _, err = verify(capsys, built.manifests)
    assert rc == 1 and "holds no manifest.json" in err


def test_a_step_that_is_not_reproducible_reads_not_comparable(built: Built, capsys) -> None:
    """Two TensorRT builds of one key differ in bytes: each manifest says so
    (`"reproducible": false`), and the committed engine digest is another build's."""
    host = built.host("b")
    edit(host / "manifest.json", lambda m: m["steps"][-1].update(reproducible=False))
    other = built.project.root / "other-build.json"
    shutil.copy(host / "manifest.json", other)

    def other_bytes(m: dict[str, Any]) -> None:
        m["artifacts"][0]["digest"] = "0" * 64
        m["steps"][-1]["outputs"]["model"]["digest"] = "0" * 64

    edit(other, other_bytes)
    rc, out, _ = verify(capsys, host, "--against", other)
    assert rc == 0, out
    assert ("note demo/b: model.txt: not comparable with the reviewed manifest "
            f"({other}): step 2 (fake-const) is not byte-reproducible") in out
    assert "checked against the folder's own manifest instead" in out
    assert "differs from the reviewed manifest" in out and "only in measured fields" in out
    assert "demo/b: ok" in out
    (host / "model.txt").write_bytes(b"HELLO")  # still checked against the folder's own manifest
    rc, out, _ = verify(capsys, host, "--against", other)
    assert rc == 2
    assert "FAIL demo/b: model.txt: content differs from the folder's own manifest" in out
    # a reproducible step is compared: the same edit without the mark fails
    edit(other, lambda m: m["steps"][-1].pop("reproducible"))
    rc, out, _ = verify(capsys, host, "--against", other)
    assert rc == 2 and "steps.1.reproducible" in out


def test_verify_imports_no_model_library(built: Built) -> None:
    host = built.host("a")
    code = ("import sys; from orchestrator.cli import main; "
            f"rc = main(['verify', {str(host)!r}, '--against', {str(built.committed('a'))!r}]); "
            "heavy = sorted(m for m in ('pydantic', 'yaml', 'torch', 'onnx', 'onnxruntime', "
            "'numpy', 'transformers', 'openvino', 'fsspec') if m in sys.modules); "
            "print('RESULT', rc, heavy)")
    from helpers import cli_env

    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=cli_env())
    assert "RESULT 0 []" in p.stdout, p.stdout + p.stderr


def test_verify_copies_of_the_manifest_constants_match() -> None:
    """verify cannot import orchestrator.targets.manifest (pydantic): its copies match. The measured
    fields it shares with committed manifests live in review/manifestset.py, which both import."""
    from orchestrator.commands import verify as v
    from orchestrator.targets import manifest

    assert (v.MANIFEST, v.RUN_LOG) == (manifest.MANIFEST, manifest.RUN_LOG)
    m = {"steps": [{"step": "x"}, {"step": "trt", "reproducible": False}, {"step": "y"}],
         "artifacts": [{"path": "e"}], "bundle": {"files": [{"path": "f"}]}}
    assert "steps.1.key" in v.measured(m) and "steps.0.key" not in v.measured(m)
    assert v.measured({"steps": [{}]}) == list(v.MEASURED)
    assert v.placed(m) == manifest.placed(m)
