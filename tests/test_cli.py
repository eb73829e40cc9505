from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAKE_RECIPE, Project

HEAVY = ("torch", "transformers", "onnxruntime", "openvino", "nncf", "onnx", "tensorrt", "ray",
         "altair", "vl_convert")


def test_help_imports_nothing_heavy() -> None:
    code = ("import sys\nfrom orchestrator.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print([m for m in {HEAVY!r} + ('pydantic', 'networkx') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: deploy-build" in out.stdout
    assert out.stdout.strip().endswith("[]")


def test_noop_build_imports_no_model_library(project: Project) -> None:
    r = project.recipe(FAKE_RECIPE)
    assert project.run(str(r)) == 0
    code = ("import sys\nfrom orchestrator.cli import main\n"
            f"rc = main([{str(r)!r}, '--cache', {str(project.cache)!r}, '--out', {str(project.out)!r}])\n"
            f"print(rc, [m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0 []", out.stderr
    assert "4 hit, 0 run" in out.stderr


def test_noop_build_imports_no_graph_library_and_starts_no_executor(project: Project) -> None:
    """A fully cached build walks the DAG without networkx and never loads an executor (nor
    subprocess, which only running a task needs), nor importlib.metadata (pydantic's plugin
    loader would import it, and the step registry's entry points scan with it, for nothing)."""
    r = project.recipe(FAKE_RECIPE)
    assert project.run(str(r)) == 0
    lazy = ("networkx", "subprocess", "orchestrator.run.executors.local", "orchestrator.run.worker",
            "importlib.metadata", "email")
    code = ("import sys\nfrom orchestrator.cli import main\n"
            f"rc = main([{str(r)!r}, '--cache', {str(project.cache)!r}, '--out', {str(project.out)!r}])\n"
            f"print(rc, [m for m in {lazy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0 []", out.stderr
    assert "4 hit, 0 run" in out.stderr


def test_steps_lists_builtins_and_plugins(project: Project, capsys) -> None:
    from orchestrator.cli import main

    assert main(["steps", "--plugins", str(project.root / "fake_steps.py")]) == 0
    out = capsys.readouterr().out
    assert "fake-upper  (version 1; plugin " in out
    assert "suffix: str (default \"\")" in out
    assert "max_bytes: int (default 1000000) [gate]" in out


def test_schema_is_json_schema_with_step_params(project: Project, capsys) -> None:
    from orchestrator.cli import main

    assert main(["schema", "--plugins", str(project.root / "fake_steps.py")]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "RecipeModel"
    items = schema["$defs"]["Target"]["properties"]["steps"]["items"]["anyOf"]
    names = [next(iter(i["properties"])) for i in items]
    assert "fake-upper" in names
    assert "fake-length" in schema["$defs"]["Target"]["properties"]["checks"]["properties"]


def test_dry_run_runs_nothing(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    capsys.readouterr()
    assert project.run(str(r), "--dry-run") == 0
    out = capsys.readouterr().out
    assert out.startswith("plan: 4 tasks: 0 HIT, 4 RUN, 0 SKIP\n")
    assert not project.out.exists()


def test_cuda_target_is_skipped_with_why_on_a_cpu_machine(project: Project, capsys) -> None:
    import glob

    if glob.glob("/dev/nvidia[0-9]*"):
        import pytest

        pytest.skip("this machine has a GPU")
    text = FAKE_RECIPE.replace("  b:\n", "  b:\n    hardware: {device: cuda}\n")
    text = text.replace("fake-const: {text: hello}", "fake-const: {text: hello}\n      - gpu-only: {}")
    (project.root / "gpu_step.py").write_text(
        "from orchestrator.step import Resources, Step\n"
        "class GpuOnly(Step):\n    name = 'gpu-only'\n    version = '1'\n"
        "    outputs = {'model': 'm.bin'}\n    resources = Resources(cuda=1)\n"
        "    input_formats = {'model': ('any',)}\n    output_formats = {'model': 'bin'}\n"
        "    def run(self, ctx):\n        raise RuntimeError('must not run')\n")
    text = text.replace("[fake_steps.py]", "[fake_steps.py, gpu_step.py]")
    recipe = project.recipe(text)
    s = project.build_json(recipe, capsys)
    why = "needs a CUDA device; this machine has no CUDA device"
    assert s["by_label"]["b/3:gpu-only"]["status"] == "skip"
    assert s["by_label"]["b/3:gpu-only"]["reasons"] == [why]
    # the hardware-independent steps of the skipped target still build (and are cached)
    assert s["by_label"]["b/2:fake-const"]["status"] == "run"
    assert s["targets"]["demo/b"]["status"] == "skipped" and s["targets"]["demo/b"]["reason"] == why
    assert s["status"] == "ok" and s["rc"] == 0
    assert f"target demo/b SKIPPED: {why}" in s["err"]
    import json

    m = json.loads((project.out / "demo/b/manifest.json").read_text())
    assert m["status"] == "skipped" and m["skipped"] == why and m["artifacts"] == []
    assert [st["step"] for st in m["steps"]] == ["fake-upper", "fake-const"]
    again = project.build_json(recipe, capsys, "--require-all")
    assert again["rc"] == 2 and "--require-all: 1 target(s) skipped on this machine: demo/b" in again["err"]
    assert again["by_label"]["b/2:fake-const"]["status"] == "hit"


def test_internal_error_exits_3_with_a_log(monkeypatch, capsys) -> None:
    import orchestrator.commands.info as info
    from orchestrator.cli import main

    def broken(args: object) -> int:
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(info, "steps", broken)
    assert main(["steps"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("internal error: ZeroDivisionError: oops (traceback in ")
    log = err.split("traceback in ")[1].split(")")[0]
    assert "ZeroDivisionError" in Path(log).read_text()


def test_usage_errors_exit_1(capsys) -> None:
    import pytest

    from orchestrator.cli import main

    with pytest.raises(SystemExit) as e:
        main(["build", "r.yaml", "--jobz", "2"])
    assert e.value.code == 1
    assert "error: unrecognized arguments: --jobz 2; see `deploy-build --help`" in capsys.readouterr().err
    assert main([]) == 1


def test_unusable_cache_is_a_user_error(project: Project, capsys) -> None:
    blocker = project.root / "file"
    blocker.write_text("not a folder")
    r = project.recipe(FAKE_RECIPE)
    from orchestrator.cli import main

    assert main([str(r), "--cache", str(blocker / "cache")]) == 1
    assert "cannot use the cache folder" in capsys.readouterr().err


def test_out_is_a_file_and_corrupt_index(project: Project, capsys) -> None:
    from orchestrator.cli import main

    r = project.recipe(FAKE_RECIPE)
    f = project.root / "out.txt"
    f.write_text("x")
    assert main([str(r), "--out", str(f), "--cache", str(project.cache)]) == 1
    assert f"--out {f} is a file" in capsys.readouterr().err
    assert project.run(str(r)) == 0
    (project.cache / "index" / "cache.db").write_bytes(b"garbage" * 1000)
    assert project.run(str(r)) == 1
    assert "is unreadable (file is not a database); delete that folder" in capsys.readouterr().err


def test_broken_pipe_is_quiet(project: Project) -> None:
    r = project.recipe(FAKE_RECIPE)
    p = subprocess.run(f"{sys.executable} -m orchestrator {r} --dry-run --cache {project.cache} | head -1",
                       shell=True, capture_output=True, text=True)
    assert p.stdout.startswith("plan: 4 tasks") and "Traceback" not in p.stderr


def test_dry_run_json(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    capsys.readouterr()
    assert project.run(str(r), "--dry-run", "--json") == 0
    plan = json.loads(capsys.readouterr().out)
    first = plan["tasks"][0]
    assert first["label"] == "a/1:fake-upper" and first["status"] == "run"
    assert first["reasons"] == ["new"] and first["targets"] == ["demo/a", "demo/b"]
    assert len(first["key"]) == 64


def test_the_build_only_parser_parses_a_build_as_the_whole_one() -> None:
    from orchestrator.cli import parser

    words = ["build", "r.yaml", "-t", "a", "--jobs", "3", "--fail-fast", "--json"]
    assert vars(parser("build").parse_args(words)) == vars(parser().parse_args(words))
    with pytest.raises(SystemExit):
        parser("build").parse_args(["diff", "a", "b"])  # only build is there


def test_the_stand_in_for_pydantics_plugin_loader_answers_like_it() -> None:
    """With plugins disabled the real loader answers "no plugins"; the stand-in (which spares the
    import of importlib.metadata) must too, validate as before, and hand any other name asked of
    it to the real module. Under any other setting the real loader is used."""
    code = ("import os, sys\nfrom orchestrator import cli\n"
            "os.environ['PYDANTIC_DISABLE_PLUGINS'] = sys.argv[1]\n"
            "cli._no_pydantic_plugin_loader()\n"
            "import pydantic\n"
            "class M(pydantic.BaseModel):\n    x: int\n"
            "assert M(x='3').x == 3\n"
            "from pydantic.plugin._loader import get_plugins\n"
            "assert list(get_plugins()) == []\n"
            "print('importlib.metadata' in sys.modules)\n"
            "import pydantic.plugin._loader as loader\n"
            "print(loader.PYDANTIC_ENTRY_POINT_GROUP)\n")
    out = subprocess.run([sys.executable, "-c", code, "__all__"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["False", "pydantic"], out.stderr
    out = subprocess.run([sys.executable, "-c", code, "logfire"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["True", "pydantic"], out.stderr
