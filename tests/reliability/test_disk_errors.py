"""Item 7 (issue 8 #10, #11): a full, read-only or forbidden disk gets a message that says what
failed (ENOSPC, EROFS, EACCES) and where, never "the index is unreadable, delete it"; --out that
cannot be written fails before the build; an index truncated to 0 bytes is said to be reset.

Tests run as root, where chmod stops nothing: unwritable places are read-only bind mounts, a full
disk is a small tmpfs, and EACCES comes from a root process without CAP_DAC_OVERRIDE (setpriv)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import FAKE_RECIPE, Project
from helpers import cli_env, run_cli


def _mount(*args: str) -> None:
    p = subprocess.run(["mount", *args], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"mount is not permitted here ({p.stderr.strip()})")


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    _mount("--bind", str(path), str(path))
    try:
        _mount("-o", "remount,ro,bind", str(path))
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)  # lazy: an open index may hold it


@contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)  # lazy: an open index may hold it


def _no_bad_advice(err: str) -> None:
    assert "unreadable" not in err and "delete that folder" not in err and "Traceback" not in err


def test_read_only_cache_says_so(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    assert project.build_json(r, capsys)["rc"] == 0
    with read_only(project.cache):
        p = run_cli(str(r), "--dry-run", "--cache", str(project.cache), "--out", str(project.out))
    assert p.returncode == 1, p.stderr
    assert "Read-only file system [EROFS]" in p.stderr and str(project.cache) in p.stderr
    _no_bad_advice(p.stderr)


def test_forbidden_cache_says_so(project: Project, capsys) -> None:
    if not shutil.which("setpriv"):
        pytest.skip("setpriv is not installed")
    r = project.recipe(FAKE_RECIPE)
    assert project.build_json(r, capsys)["rc"] == 0
    subprocess.run(["chmod", "-R", "a-w", str(project.cache)], check=True)
    try:
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", sys.executable,
               "-c", "import sys; from orchestrator.cli import main; sys.exit(main())", str(r),
               "--dry-run", "--cache", str(project.cache), "--out", str(project.out)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=cli_env())
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(project.cache)], check=True)
    if "setpriv:" in p.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {p.stderr.strip()}")
    assert p.returncode == 1, p.stderr
    assert "Permission denied [EACCES]" in p.stderr
    _no_bad_advice(p.stderr)


def test_full_disk_says_so(project: Project, capsys) -> None:
    cache = project.root / "small"
    r = project.recipe(FAKE_RECIPE)
    from orchestrator.cli import main

    args = [str(r), "--cache", str(cache), "--out", str(project.out)]
    with small_tmpfs(cache, "2m"):
        assert main(args) == 0
        with open(cache / "fill", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        project.recipe(FAKE_RECIPE.replace('suffix: "!"', 'suffix: "?"'))
        capsys.readouterr()
        rc = main(args)
        err = capsys.readouterr().err
    assert rc in (1, 2), err
    assert "No space left on device" in err and "ENOSPC" in err, err
    _no_bad_advice(err)


def test_out_below_a_file_fails_before_the_build(project: Project, capsys) -> None:
    (project.root / "afile").write_text("x")
    r = project.recipe(FAKE_RECIPE)
    from orchestrator.cli import main

    capsys.readouterr()
    rc = main([str(r), "--cache", str(project.cache), "--out", str(project.root / "afile" / "b")])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert f"{project.root / 'afile'} is a file, not a folder" in err
    assert "done" not in err and not list((project.cache / "cas").rglob("*"))


def test_out_in_a_read_only_folder_fails_before_the_build(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    project.out.mkdir()
    with read_only(project.out):
        capsys.readouterr()
        rc = project.run(str(r))
        err = capsys.readouterr().err
    assert rc == 1, err
    assert f"--out {project.out}: cannot write in {project.out}" in err and "EROFS" in err
    assert "done" not in err and not list((project.cache / "cas").rglob("*"))


def test_index_truncated_to_zero_bytes_is_reported_once(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    assert project.build_json(r, capsys)["rc"] == 0
    db = project.cache / "index" / "cache.db"
    for extra in project.cache.glob("index/cache.db-*"):  # the write-ahead log, if any
        extra.unlink()
    db.write_bytes(b"")
    s = project.build_json(r, capsys)
    assert s["rc"] == 0
    assert s["err"].count("was empty (0 bytes: truncated?)") == 1, s["err"]
    assert "every task runs again" in s["err"]
    again = project.build_json(r, capsys)
    assert "was empty" not in again["err"] and {t["status"] for t in again["tasks"]} == {"hit"}


BIG_STEP = '''\
from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator.step import Step, StepContext


class P(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Big(Step):
    name = "big"
    version = "1"
    Params = P
    outputs = {"model": "model.bin"}
    input_formats = {"model": ("any",)}
    output_formats = {"model": "big-blob"}

    def run(self, ctx: StepContext) -> dict[str, Any]:
        with open(ctx.output("model"), "wb") as f:
            for _ in range(64):
                f.write(b"x" * 2**20)
        return {}
'''


def test_a_file_size_limit_hit_by_a_task_says_efbig_and_where(project: Project) -> None:
    """Issue 18, item 9: a task that hits a disk condition while writing failed with a raw worker
    traceback; now with [EFBIG] (or [ENOSPC]), where it was writing, and what to do."""
    import json
    import resource

    from helpers import run_cli

    (project.root / "big.py").write_text(BIG_STEP)
    r = project.recipe("name: b\nplugins: [big.py]\nmodel:\n  source: ./model\ntargets:\n"
                       "  a:\n    steps:\n      - big: {}\n")

    def limit() -> None:  # 16 MiB per file: the build's own files fit, the 64 MiB output not
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 2**20, 16 * 2**20))

    done = run_cli(str(r), "--cache", str(project.cache), "--out", str(project.out), "--json",
                   timeout=60, preexec_fn=limit)
    assert done.returncode == 2, done.stderr
    [task] = json.loads(done.stdout)["tasks"]
    assert "[EFBIG]" in task["log_tail"] and "ulimit -f" in task["log_tail"], task["log_tail"]
    assert "the task's outputs in" in task["log_tail"] and "nothing was cached" in task["log_tail"]
    assert "Traceback" not in task["log_tail"]
