"""Bad recipes get one exact message each: where (file:line:col), what, and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Project

GOOD = """\
name: demo
plugins: [fake_steps.py]
model:
  source: ./model
targets:
  a:
    steps:
      - fake-upper: {suffix: "!"}
"""

CASES = [
    ("misspelt step",
     GOOD.replace("fake-upper:", "fake-uper:"),
     "unknown step 'fake-uper' at {f}:8:9; did you mean 'fake-upper'?"),
    ("misspelt top-level key",
     GOOD.replace("targets:", "targetz:"),
     "unknown key 'targetz' at {f}:5:1; did you mean 'targets'?"),
    ("misspelt step param",
     GOOD.replace("suffix:", "sufix:"),
     "unknown key 'sufix' in step 'fake-upper' at {f}:8:22; did you mean 'suffix'?"),
    ("wrong param type",
     GOOD.replace('suffix: "!"', "sleep: soon"),
     "invalid sleep in step 'fake-upper' at {f}:8:29: Input should be a valid number, "
     "unable to parse string as a number"),
    ("misspelt model key",
     GOOD.replace("  source:", "  sorce:"),
     "unknown key 'sorce' at {f}:4:3; did you mean 'source'?"),
    ("bad hardware device",
     GOOD.replace("    steps:", "    hardware: {device: tpu}\n    steps:"),
     "invalid targets.a.hardware.device at {f}:7:24: Input should be 'cpu' or 'cuda'"),
    ("unknown check",
     GOOD + "    checks:\n      fake-lenght: {}\n",
     "unknown check 'fake-lenght' at {f}:10:7; did you mean 'fake-length'?"),
    ("step as a check",
     GOOD + "    checks:\n      fake-upper: {}\n",
     "unknown check 'fake-upper' at {f}:10:7; `deploy-build steps` lists the checks"),
    ("two keys in one step",
     GOOD.replace('- fake-upper: {suffix: "!"}', '- fake-upper: {}\n        fake-tree: {}'),
     "step at {f}:8:9 must be one 'name: {{params}}' pair, got 2 keys"),
    ("missing model",
     GOOD.replace("model:\n  source: ./model\n", ""),
     "missing key 'model' at {f}:1:1; add it (see `deploy-build schema`)"),
    ("no steps",
     GOOD.replace('      - fake-upper: {suffix: "!"}\n', "").replace("steps:", "steps: []"),
     "invalid targets.a.steps at {f}:7:12: List should have at least 1 item after validation, not 0"),
    ("duplicate key",
     GOOD.replace("name: demo", "name: demo\nname: again"),
     "duplicate key 'name' at {f}:2:1; remove one of them"),
    ("yaml syntax",
     GOOD.replace('{suffix: "!"}', '{suffix: "!"'),
     "invalid YAML at {f}:9:1: did not find expected ',' or '}}'; fix the syntax there"),
    ("missing plugin file",
     GOOD.replace("fake_steps.py", "nope.py"),
     "plugin file {d}/nope.py not found (listed at {f}:2:11); fix the path in 'plugins:'"),
    ("not a mapping",
     "- just\n- a list\n",
     "recipe at {f}:1:1 must be a mapping with 'model' and 'targets'"),
    ("bad target name",
     GOOD.replace("  a:", "  'a b':"),
     "target name 'a b' at {f}:6:3 may only hold letters, digits, '.', '_' and '-'"),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_recipe_message(project: Project, capsys, text: str, expected: str) -> None:
    f = project.recipe(text)
    capsys.readouterr()
    rc = project.run(str(f), "--dry-run")
    err = capsys.readouterr().err
    assert rc == 1
    assert err == "error: " + expected.format(f=f, d=project.root) + "\n"
    assert "Traceback" not in err
    assert not project.cache.exists() or not list((project.cache / "cas").rglob("*"))


def test_missing_recipe_file(project: Project, capsys) -> None:
    assert project.run(str(project.root / "nope.yaml")) == 1
    assert "recipe " in capsys.readouterr().err


def test_missing_model_source(project: Project, capsys) -> None:
    f = project.recipe(GOOD.replace("./model", "./nomodel"))
    assert project.run(str(f)) == 1
    err = capsys.readouterr().err
    assert "model source './nomodel'" in err and "is not a folder" in err


def test_missing_package_source(project: Project, capsys) -> None:
    f = project.recipe(GOOD.replace("./model", "package:no-such-model-pkg"))
    assert project.run(str(f)) == 1
    assert "package 'no-such-model-pkg' is not installed; install it" in capsys.readouterr().err


def test_unreachable_hub_fails_fast_with_a_clear_message(project: Project, capsys,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    f = project.recipe(GOOD.replace("./model", "some-org/some-model"))
    t0 = time.monotonic()
    assert project.run(str(f)) == 1
    assert time.monotonic() - t0 < 30
    assert "hub is not reachable" in capsys.readouterr().err


def test_a_failed_recipe_does_not_touch_existing_outputs(project: Project, capsys) -> None:
    f = project.recipe(GOOD)
    assert project.run(str(f)) == 0
    manifest = (project.out / "demo/a/manifest.json").read_bytes()
    project.recipe(GOOD.replace("fake-upper:", "fake-uper:"))
    assert project.run(str(f)) == 1
    assert (project.out / "demo/a/manifest.json").read_bytes() == manifest


def test_broken_plugin_is_named(project: Project, capsys) -> None:
    (project.root / "bad_plugin.py").write_text(
        "from orchestrator.step import Step\n"
        "class Bad(Step):\n    name = 'Bad Name'\n    version = ''\n")
    f = project.recipe(GOOD.replace("[fake_steps.py]", "[fake_steps.py, bad_plugin.py]"))
    assert project.run(str(f)) == 1
    err = capsys.readouterr().err
    assert f"step class Bad from plugin {Path(project.root / 'bad_plugin.py')} is not a valid step" in err
    assert "'name' must be lowercase" in err and "'version' must be a non-empty string" in err
    assert "it must implement run(self, ctx)" in err
