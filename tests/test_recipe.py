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
     "unknown check 'fake-upper' at {f}:10:7; 'fake-upper' is a step: list it under 'steps:'"),
    ("two keys in one step",
     GOOD.replace('- fake-upper: {suffix: "!"}', '- fake-upper: {}\n        fake-tree: {}'),
     "step at {f}:8:9 must be one 'name: {{params}}' pair (and optionally 'limits: {{...}}' "
     "beside it), got 2 keys"),
    ("custom tag",
     GOOD.replace("./model", "!env MODEL"),
     "invalid YAML at {f}:4:11: could not determine a constructor for the tag '!env'; "
     "recipes are plain YAML: remove the tag"),
    ("NaN param",
     GOOD.replace('suffix: "!"', "sleep: .nan"),
     ".nan at {f}:8:29 is not allowed; give a finite number"),
    ("NUL byte",
     GOOD.replace("name: demo", "name: de\x00mo"),
     "invalid YAML at {f}:1:9: control characters are not allowed; remove the character there"),
    ("alias bomb",
     "a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
     "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
     "e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n",
     "recipe {f} expands to more than 100000 values (through aliases?); a recipe should be a few "
     "hundred lines"),
    ("revision on a local source",
     GOOD.replace("  source: ./model", "  source: ./model\n  revision: abc123"),
     "model.revision at {f}:5:13 only applies to hub ids; remove it (a local or package source is "
     "pinned by its content digest)"),
    ("zero batch",
     GOOD.replace("targets:", "inputs: {shapes: {batch: [0]}}\ntargets:"),
     "invalid inputs.shapes.batch.0 at {f}:5:27: Input should be greater than 0"),
    ("cosine out of range",
     GOOD + "    checks:\n      fake-length: {max_bytes: 10}\n      parity: {mean_cosine: 1.5}\n",
     "invalid mean_cosine in check 'parity' at {f}:11:29: Input should be less than or equal to 1"),
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
    # a plugin is imported (and validated) when the recipe uses a step it declares
    f = project.recipe(GOOD.replace("[fake_steps.py]", "[fake_steps.py, bad_plugin.py]")
                       + "      - Bad Name: {}\n")
    assert project.run(str(f)) == 1
    err = capsys.readouterr().err
    assert f"step class Bad from plugin {Path(project.root / 'bad_plugin.py')} is not a valid step" in err
    assert "'name' must be lowercase" in err and "'version' must be a non-empty string" in err
    assert "it must implement run(self, ctx)" in err


@pytest.mark.parametrize("content,expected", [
    (None, "not found; fix the path (relative to the recipe)"),
    (b"\xff\xfe bad", "is not UTF-8 text (byte 0); save it as UTF-8"),
    (b"\n  \n", "is empty; give one sample text per line"),
])
def test_bad_samples_file(project: Project, capsys, content: bytes | None, expected: str) -> None:
    samples = project.root / "samples.txt"
    if content is not None:
        samples.write_bytes(content)
    text = GOOD.replace("targets:", "inputs:\n  samples: samples.txt\ntargets:")
    text = text.replace("    steps:", "    checks:\n      fake-samples: {}\n    steps:")
    (project.root / "samples_check.py").write_text(
        "from orchestrator.step import Step\n"
        "class UsesSamples(Step):\n    name = 'fake-samples'\n    version = '1'\n    kind = 'check'\n"
        "    inputs = ('model', 'samples')\n    input_formats = {'model': ('any',)}\n"
        "    def run(self, ctx):\n        return {}\n")
    text = text.replace("[fake_steps.py]", "[fake_steps.py, samples_check.py]")
    f = project.recipe(text)
    assert project.run(str(f), "--dry-run") == 1
    where = f"samples file {samples} (inputs.samples at {f}:6:12) "
    assert capsys.readouterr().err == "error: " + where + expected + "\n"


def test_hub_source_downloads_when_reachable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    from orchestrator.plan import sources
    from orchestrator.registry import Registry

    Registry().get("export-onnx")  # importing the model steps must not switch the hub off
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    calls = []

    def fake_download(repo_id: str, revision: str | None = None, local_files_only: bool = False,
                      **kw: object) -> str:
        calls.append((repo_id, revision, local_files_only))
        if local_files_only:
            raise FileNotFoundError("not in the local cache")
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.setattr(sources, "_reachable", lambda host, timeout=3.0: True)
    path = sources.resolve_model_path("org/model", tmp_path, "abc123", "r.yaml:4:11")
    assert path == snapshot
    assert calls == [("org/model", "abc123", True), ("org/model", "abc123", False)]
