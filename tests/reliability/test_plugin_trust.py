"""Plugins are code you trust (issue 8, item 9): a recipe's plugin outside its project is refused
unless allowed explicitly, and a plugin file is imported only when the command uses a step it
declares (so an unused plugin's top-level code never runs for a build, --dry-run or explain)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import FIXTURES, Project
from helpers import run_cli

RECIPE = """\
name: demo
plugins: [fake_steps.py, {extra}]
model:
  source: ./model
targets:
  a:
    steps:
      - fake-upper: {{suffix: "!"}}
"""

MARKED_PLUGIN = """\
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from orchestrator.step import Step

Path({marker!r}).write_text("ran")


class P(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Marked(Step):
    name = "marked"
    version = "1"
    Params = P
    outputs = {{"model": "model.txt"}}
    input_formats = {{"model": ("any",)}}
    output_formats = {{"model": "text"}}

    def run(self, ctx):
        ctx.input("model")
        ctx.output("model").write_text("marked")
        return {{}}
"""


def _marked(folder: Path, marker: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    plugin = folder / "marked.py"
    plugin.write_text(MARKED_PLUGIN.format(marker=str(marker)))
    return plugin


def _args(project: Project, *args: str) -> list[str]:
    return [*args, "--cache", str(project.cache), "--out", str(project.out)]


def test_plugin_outside_the_project_is_refused_with_the_hint(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    project = Project(root)
    (root / "pyproject.toml").write_text("")
    outside = _marked(tmp_path / "elsewhere", tmp_path / "MARKER")
    recipe = project.recipe(RECIPE.format(extra=str(outside)))
    r = run_cli(*_args(project, str(recipe), "--dry-run"))
    assert r.returncode == 1, r.stderr
    assert f"plugin '{outside}' at {recipe}:2:" in r.stderr
    assert "outside the recipe's project" in r.stderr and str(root) in r.stderr
    assert f"--allow-plugin-path {outside}" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "MARKER").exists()


def test_a_symlink_inside_the_project_to_a_plugin_outside_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    project = Project(root)
    outside = _marked(tmp_path / "elsewhere", tmp_path / "MARKER")
    (root / "link.py").symlink_to(outside)
    recipe = project.recipe(RECIPE.format(extra="link.py"))
    r = run_cli(*_args(project, "explain", str(recipe)))
    assert r.returncode == 1 and "outside the recipe's project" in r.stderr, r.stderr
    assert f"--allow-plugin-path {outside}" in r.stderr


@pytest.mark.parametrize("how", ["flag", "env"])
def test_plugin_outside_the_project_is_allowed_explicitly(tmp_path: Path, how: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    project = Project(root)
    marker = tmp_path / "MARKER"
    outside = _marked(tmp_path / "elsewhere", marker)
    recipe = project.recipe(RECIPE.format(extra=str(outside)) + "      - marked: {}\n")
    if how == "flag":
        r = run_cli(*_args(project, str(recipe), "--dry-run", "--allow-plugin-path",
                           str(outside.parent)))
    else:
        monkeypatch.setenv("DEPLOY_BUILD_ALLOW_PLUGINS", str(outside))
        r = run_cli(*_args(project, str(recipe), "--dry-run"))
    assert r.returncode == 0, r.stderr
    assert "a/2:marked" in r.stdout + r.stderr
    assert marker.exists()  # used, so imported


@pytest.mark.parametrize("command", [["--dry-run"], ["explain"], []])
def test_an_unused_plugin_never_runs(project: Project, command: list[str]) -> None:
    marker = project.root / "MARKER"
    _marked(project.root / "more", marker)
    recipe = project.recipe(RECIPE.format(extra="more/marked.py"))
    if command == ["explain"]:
        args = _args(project, "explain", str(recipe))
    else:
        args = _args(project, str(recipe), *command)
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert not marker.exists(), "an unused plugin's top-level code ran"


def test_a_used_plugin_runs(project: Project) -> None:
    marker = project.root / "MARKER"
    _marked(project.root / "more", marker)
    recipe = project.recipe(RECIPE.format(extra="more/marked.py") + "      - marked: {}\n")
    r = run_cli(*_args(project, str(recipe)))
    assert r.returncode == 0, r.stderr
    assert marker.exists()
    assert (project.out / "demo" / "a" / "model.txt").read_text() == "marked"


def test_repo_recipe_plugins_stay_inside_the_project() -> None:
    """recipes/bert-pruned.yaml lists ../plugins/prune_heads.py: inside the project (the folder
    with pyproject.toml), so it needs no flag. (guard)"""
    from orchestrator.recipe import plugin_project

    repo = FIXTURES.parents[1]
    assert plugin_project(repo / "recipes" / "bert-pruned.yaml") == repo


def test_an_unused_entry_point_is_not_imported(project: Project) -> None:
    """An installed step entry point is imported only when a recipe uses its step (by the entry
    point's name); `steps` lists, and so imports, them all."""
    import subprocess
    import sys

    from test_registry import installed_plugin

    env = installed_plugin(project.root / "site")
    marker = project.root / "EP_MARKER"
    module = project.root / "site" / "team_steps.py"
    module.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
                      + module.read_text())
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(FIXTURES.parents[1])])
    recipe = project.recipe(RECIPE.format(extra="fake_steps.py").replace(
        "[fake_steps.py, fake_steps.py]", "[fake_steps.py]"))
    for args in (["--dry-run"], ["explain"]):
        cmd = [str(recipe), *args] if args != ["explain"] else ["explain", str(recipe)]
        p = subprocess.run([sys.executable, "-m", "orchestrator", *_args(project, *cmd)],
                           env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert not marker.exists(), f"an unused entry point was imported by {args}"
    used = project.recipe(RECIPE.format(extra="fake_steps.py").replace(
        "[fake_steps.py, fake_steps.py]", "[fake_steps.py]") + "      - team-sign: {}\n", "u.yaml")
    p = subprocess.run([sys.executable, "-m", "orchestrator", *_args(project, str(used), "--dry-run")],
                       env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert marker.exists()
