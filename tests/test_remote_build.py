"""Two machines (two local caches) sharing one remote cache: the second builds nothing, and its
manifests are byte-identical to the first's. A shared folder and S3 (moto on loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAKE_RECIPE, Project
from remote_helpers import free_port, remote_url, s3_endpoint  # noqa: F401


def _project(root: Path) -> Project:
    root.mkdir()
    return Project(root)


def _manifests(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("manifest.json"))}


@pytest.mark.parametrize("kind", ["folder", "s3"])
def test_second_machine_builds_nothing(kind: str, tmp_path: Path, request: pytest.FixtureRequest,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    url = remote_url(kind, tmp_path, request)
    one, two = _project(tmp_path / "one"), _project(tmp_path / "two")
    r1, r2 = one.recipe(FAKE_RECIPE), two.recipe(FAKE_RECIPE)
    first = one.build_json(r1, capsys, "--remote-cache", url)
    assert first["rc"] == 0, first["err"]
    assert {t["status"] for t in first["tasks"]} == {"run"}
    second = two.build_json(r2, capsys, "--remote-cache", url)
    assert second["rc"] == 0, second["err"]
    assert {t["status"] for t in second["tasks"]} == {"hit"}, second["err"]
    assert _manifests(one.out) and _manifests(one.out) == _manifests(two.out)
    from orchestrator.cli import main

    capsys.readouterr()
    assert main(["cache", "stats", "--cache", str(two.cache), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)["steps"]
    assert stats["fake-tree"]["hit"] == stats["fake-tree"]["remote_hit"] == 1
    tree = two.out / "demo" / "a" / "ir"
    first_tree = one.out / "demo" / "a" / "ir"
    assert sorted(p.name for p in tree.iterdir()) == sorted(p.name for p in first_tree.iterdir())
    # what the second machine fetched (the targets' outputs) is kept locally; an intermediate
    # output it never needed was not downloaded, so without the remote that one task runs
    third = two.build_json(r2, capsys, "--remote-cache", "none")
    status = {label: t["status"] for label, t in third["by_label"].items()}
    assert status.pop("a/1:fake-upper") == "run" and set(status.values()) == {"hit"}, third["err"]


@pytest.mark.usefixtures("s3_endpoint")
def test_read_mode_never_writes_and_an_unreachable_remote_warns_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    one = _project(tmp_path / "one")
    r = one.recipe(FAKE_RECIPE)
    monkeypatch.setenv("DEPLOY_BUILD_REMOTE_CACHE", shared.as_uri())
    monkeypatch.setenv("DEPLOY_BUILD_REMOTE_CACHE_MODE", "read")
    s = one.build_json(r, capsys)
    assert s["rc"] == 0 and not list(shared.rglob("ac/*")), s["err"]
    monkeypatch.setenv("DEPLOY_BUILD_REMOTE_CACHE", "s3://nowhere/cache")
    monkeypatch.setenv("DEPLOY_BUILD_REMOTE_CACHE_MODE", "readwrite")
    monkeypatch.setenv("DEPLOY_BUILD_REMOTE_OPTIONS",
                       json.dumps({"endpoint_url": f"http://127.0.0.1:{free_port()}",
                                   "skip_instance_cache": True}))
    s = one.build_json(r, capsys, "--force")
    assert s["rc"] == 0, s["err"]
    assert s["err"].count("unusable") == 1 and "local cache only" in s["err"]


TINY = """\
name: tiny
model:
  source: @MODEL@
inputs:
  shapes: {batch: [1], sequence: [16]}
  samples: samples.txt
targets:
  ort-fp32:
    steps:
      - export-onnx: {opset: 17}
      - ort-optimize: {}
    checks:
      parity: {}
  openvino-fp32:
    steps:
      - export-onnx: {opset: 17}
      - openvino-convert: {}
    checks:
      parity: {}
"""


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def test_two_machines_share_an_s3_cache_on_the_tiny_model(
        tiny_model_dir: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = remote_url("s3", tmp_path, request)
    env = {**os.environ, "DEPLOY_BUILD_REMOTE_CACHE": url, "HOME": str(tmp_path)}
    outs = {}
    for machine in ("one", "two"):
        folder = tmp_path / machine
        folder.mkdir()
        (folder / "samples.txt").write_text("the quick brown fox\nhello world\na short one\n")
        recipe = folder / "tiny.yaml"
        recipe.write_text(TINY.replace("@MODEL@", str(tiny_model_dir)))
        p = _cli([str(recipe), "--cache", str(folder / "cache"), "--out", str(folder / "out"),
                  "--json"], env)
        assert p.returncode == 0, p.stderr[-3000:]
        outs[machine] = json.loads(p.stdout)
    assert {t["status"] for t in outs["one"]["tasks"]} == {"run"}
    assert {t["status"] for t in outs["two"]["tasks"]} == {"hit"}
    one, two = _manifests(tmp_path / "one" / "out"), _manifests(tmp_path / "two" / "out")
    assert len(one) == 2 and one == two
    for rel in ("ort-fp32/model.onnx", "openvino-fp32/openvino_model.xml",
                "openvino-fp32/openvino_model.bin"):
        assert (tmp_path / "two" / "out" / "tiny" / rel).read_bytes() == \
            (tmp_path / "one" / "out" / "tiny" / rel).read_bytes()


def test_a_build_without_a_remote_imports_no_fsspec(tmp_path: Path) -> None:
    project = _project(tmp_path / "p")
    r = project.recipe(FAKE_RECIPE)
    shared = (tmp_path / "shared").as_uri()
    code = ("import sys\nfrom orchestrator.cli import main\n"
            "rc = main(sys.argv[1:])\n"
            "print(rc, [m for m in ('fsspec', 's3fs', 'botocore', 'aiobotocore') if m in sys.modules])")
    base = [sys.executable, "-c", code, str(r), "--cache", str(project.cache), "--out",
            str(project.out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOY_BUILD_REMOTE")}
    out = subprocess.run(base, capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "0 []", out.stderr
    out = subprocess.run([*base, "--remote-cache", shared], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "0 ['fsspec']", out.stderr  # a folder needs no S3 client


RACE = FAKE_RECIPE.replace('fake-upper: {suffix: "!"}', 'fake-upper: {suffix: "!", sleep: 3}')


def test_two_builds_on_two_machines_build_each_task_once(tmp_path: Path) -> None:
    """Two deploy-build processes, each with its own local cache, one shared remote: the remote
    lease makes one of them build the slow task, the other wait for it and take the hit."""
    shared = (tmp_path / "shared").as_uri()
    env = {**os.environ, "DEPLOY_BUILD_REMOTE_CACHE": shared}
    procs = []
    for machine in ("one", "two"):
        project = _project(tmp_path / machine)
        r = project.recipe(RACE)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "orchestrator", str(r), "--cache", str(project.cache), "--out",
             str(project.out), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env))
    try:
        results = [p.communicate(timeout=300) for p in procs]
    finally:  # a build past its timeout is killed (its workers die with it), never left running
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in results]
    runs = [t["label"] for out, _ in results for t in json.loads(out)["tasks"]
            if t["status"] == "run"]
    assert sorted(runs) == sorted(set(runs)) and "a/1:fake-upper" in runs, results[1][1][-2000:]
    assert len(runs) == 4  # every task built once, on one machine or the other
    assert _manifests(tmp_path / "one" / "build") == _manifests(tmp_path / "two" / "build")


def test_the_recipe_names_its_remote_and_a_bad_url_is_a_located_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEPLOY_BUILD_REMOTE_CACHE", raising=False)
    shared = tmp_path / "shared"
    p = _project(tmp_path / "p")
    text = FAKE_RECIPE.replace("targets:", f"cache: {{remote: '{shared.as_uri()}'}}\ntargets:", 1)
    s = p.build_json(p.recipe(text), capsys)
    assert s["rc"] == 0 and len(list(shared.glob("ac/*"))) == 4, s["err"]
    r = p.recipe(FAKE_RECIPE.replace("targets:", "cache: {remote: 'nosuch://x'}\ntargets:", 1))
    capsys.readouterr()
    assert p.run(str(r)) == 1
    err = capsys.readouterr().err
    assert "cache.remote at" in err and "r.yaml:5:" in err and "Protocol not known" in err


def test_a_poisoned_artifact_on_the_remote_is_refused_and_rebuilt(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    shared = tmp_path / "shared"
    one, two = _project(tmp_path / "one"), _project(tmp_path / "two")
    assert one.build_json(one.recipe(FAKE_RECIPE), capsys, "--remote-cache", shared.as_uri())["rc"] == 0
    digest = hashlib.sha256(b"hello").hexdigest()  # target b's artifact (fake-const)
    blob = shared / "cas" / "sha256" / digest[:2] / digest[2:]
    blob.write_bytes(b"evil!")
    s = two.build_json(two.recipe(FAKE_RECIPE), capsys, "--remote-cache", shared.as_uri())
    assert s["rc"] == 0, s["err"]
    assert "does not match its digest" in s["err"] and "refused" in s["err"]
    assert s["by_label"]["b/2:fake-const"]["status"] == "run"
    assert "corrupt on the remote" in s["by_label"]["b/2:fake-const"]["reasons"][0]
    assert (two.out / "demo" / "b" / "model.txt").read_bytes() == b"hello"
    assert blob.read_bytes() == b"hello"  # the rebuilt, good bytes replaced it
