"""Item 6 (issue 8 #8): inputs that are not regular files, or too large, are refused at once with
the path, never a hang, a traceback or gigabytes read. Run in a subprocess with a timeout where the
old behaviour was a hang."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from conftest import FAKE_RECIPE, Project
from helpers import run_cli

SAMPLES_STEP = '''
from pydantic import BaseModel, ConfigDict
from orchestrator.step import Step

class P(BaseModel):
    model_config = ConfigDict(extra="forbid")

class ReadSamples(Step):
    name = "fake-samples"
    version = "1"
    description = "Reads the samples."
    Params = P
    inputs = ("model", "samples")
    input_formats = {"model": ("any",)}
    output_formats = {"model": "text"}
    outputs = {"model": "model.txt"}

    def run(self, ctx):
        ctx.output("model").write_bytes(ctx.input("samples").read_bytes())
        return {}
'''

SAMPLES_RECIPE = """\
name: s
plugins: [samples_step.py]
model:
  source: ./model
inputs:
  samples: {samples}
targets:
  a:
    steps:
      - fake-samples: {{}}
"""


def _samples_recipe(project: Project, samples: str) -> Path:
    (project.root / "samples_step.py").write_text(SAMPLES_STEP)
    return project.recipe(SAMPLES_RECIPE.format(samples=samples))


def _dry_run(project: Project, recipe: Path) -> tuple[int, str]:
    p = run_cli(str(recipe), "--dry-run", "--cache", str(project.cache), "--out", str(project.out),
                timeout=30)
    return p.returncode, p.stderr


def test_samples_file_works(project: Project, capsys) -> None:
    (project.root / "s.txt").write_text("one\ntwo\n")
    s = project.build_json(_samples_recipe(project, "s.txt"), capsys)
    assert s["rc"] == 0


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "socket"])
def test_samples_that_is_not_a_regular_file(project: Project, kind: str) -> None:
    path = project.root / "s.txt"
    if kind == "fifo":
        os.mkfifo(path)
        expected = "is a FIFO (named pipe)"
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
        expected = "is a character device"
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        expected = "is a socket"
    rc, err = _dry_run(project, _samples_recipe(project, "s.txt"))
    assert rc == 1, err
    shown = path.resolve()  # the recipe's path, links resolved (/dev/zero)
    assert f"samples file {shown} (inputs.samples at" in err and expected in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("pseudo", ["/proc/self/environ", "/sys/kernel/mm/transparent_hugepage/enabled"])
def test_samples_on_a_pseudo_file_system_are_refused(project: Project, pseudo: str) -> None:
    """Issue 18, item 5: /proc/self/environ is a 'regular file' of size 0 that the kernel fills
    with the process's environment when read: taken as samples, the environment (its secrets
    among them) would land in the cache."""
    if not Path(pseudo).exists():
        pytest.skip(f"{pseudo} does not exist here")
    os.environ["DEPLOY_BUILD_TEST_SECRET"] = "s3cr3t-value"
    try:
        rc, err = _dry_run(project, _samples_recipe(project, pseudo))
    finally:
        del os.environ["DEPLOY_BUILD_TEST_SECRET"]
    assert rc == 1, err
    assert "samples (inputs.samples at " in err and " is on a " in err, err  # /proc/self: resolved
    assert " file system: the kernel makes its contents up" in err
    assert "Traceback" not in err
    stored = b"".join(p.read_bytes() for p in project.cache.rglob("*") if p.is_file())
    assert b"s3cr3t-value" not in stored


def test_samples_too_large_is_refused_without_reading_it(project: Project) -> None:
    path = project.root / "s.txt"
    with open(path, "wb") as f:
        f.truncate(65 * 2**20)  # sparse: costs no disk
    rc, err = _dry_run(project, _samples_recipe(project, "s.txt"))
    assert rc == 1 and "larger than 64 MiB" in err, err


def test_samples_dangling_symlink(project: Project, capsys) -> None:
    (project.root / "s.txt").symlink_to(project.root / "gone.txt")
    capsys.readouterr()
    assert project.run(str(_samples_recipe(project, "s.txt")), "--dry-run") == 1
    err = capsys.readouterr().err
    assert f"samples file {project.root / 'gone.txt'} (inputs.samples at" in err and "not found" in err


@pytest.mark.parametrize("kind", ["fifo", "dangling", "socket"])
def test_model_folder_with_a_file_that_is_not_regular(project: Project, kind: str) -> None:
    path = project.root / "model" / "extra.bin"
    if kind == "fifo":
        os.mkfifo(path)
        expected = "is a FIFO (named pipe), not a regular file"
    elif kind == "dangling":
        path.symlink_to(project.root / "nowhere.bin")
        expected = "is a dangling symbolic link"
    else:
        socket.socket(socket.AF_UNIX).bind(str(path))
        expected = "is a socket, not a regular file"
    rc, err = _dry_run(project, project.recipe(FAKE_RECIPE))
    assert rc == 1, err
    assert str(path) in err and expected in err and "model.source at" in err


def test_oversized_recipe_is_refused_at_once(project: Project) -> None:
    f = project.recipe(FAKE_RECIPE + "# padding\n" + "- x\n" * 300_000)  # 1.2 MB
    rc, err = _dry_run(project, f)
    assert rc == 1 and "more than the 1 MiB a recipe may be" in err, err


def test_recipe_that_is_a_fifo(project: Project) -> None:
    f = project.root / "r.yaml"
    os.mkfifo(f)
    rc, err = _dry_run(project, f)
    assert rc == 1 and "is a FIFO (named pipe), not a regular file" in err, err
