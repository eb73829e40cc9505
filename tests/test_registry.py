"""Steps from an installed distribution's `deploy_build.steps` entry points, next to built-ins and
plugin files, all through one registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Project

STEP = '''
from pydantic import BaseModel, ConfigDict
from orchestrator.step import Step


class P(BaseModel):
    model_config = ConfigDict(extra="forbid")
    word: str = "signed"


class Sign(Step):
    name = "team-sign"
    version = "1"
    description = "Appends a signature line (a team's own step, installed as a package)."
    Params = P
    outputs = {"model": "signed.txt"}
    input_formats = {"model": ("any",)}
    output_formats = {"model": "text"}

    def run(self, ctx):
        src = ctx.input("model")
        data = b"".join(p.read_bytes() for p in sorted(src.rglob("*")) if p.is_file()) \\
            if src.is_dir() else src.read_bytes()
        ctx.output("model").write_bytes(data + b"\\n" + ctx.params.word.encode())
        return {"bytes": len(data)}
'''


def installed_plugin(site: Path) -> dict[str, str]:
    """A minimal installed distribution (dist-info + module) on PYTHONPATH."""
    site.mkdir()
    (site / "team_steps.py").write_text(STEP)
    info = site / "team_steps-2.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: team-steps\nVersion: 2.1.0\n")
    (info / "entry_points.txt").write_text("[deploy_build.steps]\nteam-sign = team_steps:Sign\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return env


def test_entry_point_step_is_listed_and_builds(project: Project) -> None:
    env = installed_plugin(project.root / "site")
    out = subprocess.run([sys.executable, "-m", "orchestrator", "steps"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "team-sign  (version 1; entry point team-sign of team-steps 2.1.0)" in out
    assert "export-onnx  (version" in out and "built-in" in out
    recipe = project.recipe("name: ep\nmodel: {source: ./model}\n"
                            "targets:\n  t:\n    steps:\n      - team-sign: {word: ok}\n")
    p = subprocess.run([sys.executable, "-m", "orchestrator", str(recipe), "--cache",
                        str(project.cache), "--out", str(project.out), "--json"],
                       env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    m = json.loads((project.out / "ep/t/manifest.json").read_text())
    assert m["steps"][0]["plugin"] == {"dist": "team-steps", "version": "2.1.0"}
    assert (project.out / "ep/t/signed.txt").read_bytes().endswith(b"\nok")


def test_broken_entry_point_is_named(project: Project) -> None:
    env = installed_plugin(project.root / "site")
    (project.root / "site" / "team_steps.py").write_text("raise ImportError('no such lib')\n")
    p = subprocess.run([sys.executable, "-m", "orchestrator", "steps"], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 1
    assert "step plugin entry point team-sign of team-steps 2.1.0 failed to load: " \
           "ImportError: no such lib; fix or uninstall team-steps" in p.stderr


def test_plugin_attributes_are_validated(project: Project, capsys) -> None:
    (project.root / "odd.py").write_text(
        "from orchestrator.step import Step\n"
        "class Odd(Step):\n    name = 'odd'\n    version = '1'\n    toolchain = 'torch'\n"
        "    hardware_keys = ('gpu_model',)\n    outputs = {'model': 'm.bin'}\n"
        "    def run(self):\n        return {}\n")
    recipe = project.recipe("plugins: [odd.py]\nmodel: {source: ./model}\n"
                            "targets:\n  t:\n    steps: [{odd: {}}]\n")
    assert project.run(str(recipe)) == 1
    err = capsys.readouterr().err
    assert "'toolchain' must be a tuple of strings, got 'torch'" in err
    assert "unknown hardware_keys ['gpu_model']; known: ['accelerator', 'device', 'requires']" in err
    assert "run must take exactly (self, ctx)" in err


def test_the_quick_look_for_entry_points_finds_a_declaring_distribution(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipe of built-in steps must not pay for importlib.metadata's full scan; the quick look
    that spares it must still see any distribution that declares the group."""
    from orchestrator.registry import _some_distribution_names_the_group

    bare = tmp_path / "bare"
    (bare / "other-1.0.dist-info").mkdir(parents=True)
    (bare / "other-1.0.dist-info" / "entry_points.txt").write_text("[console_scripts]\nx = y:z\n")
    monkeypatch.setattr(sys, "path", [str(bare), str(tmp_path / "missing")])
    assert not _some_distribution_names_the_group()
    installed_plugin(tmp_path / "site")
    monkeypatch.setattr(sys, "path", [str(bare), str(tmp_path / "site")])
    assert _some_distribution_names_the_group()
