"""Issue 18, "The plugin contract": traps a plugin author working from docs/plugins.md alone fell
into. Each is refused or reported with the plugin's file:line and the recipe's place."""

from __future__ import annotations

import pytest
from conftest import Project
from helpers import run_cli

PLAN_RAISES = '''\
from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator.step import Step, StepContext


class P(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Planner(Step):
    name = "bad-planner"
    version = "1"
    Params = P
    outputs = {"model": "model.txt"}
    input_formats = {"model": ("any",)}
    output_formats = {"model": "text"}

    @classmethod
    def plan(cls, params, at):
        return {"oops": 1}["missing"]

    def run(self, ctx: StepContext) -> dict[str, Any]:
        return {}
'''


def test_an_exception_in_a_plugins_plan_blames_the_plugin_and_the_recipe_line(
        project: Project) -> None:
    (project.root / "planner.py").write_text(PLAN_RAISES)
    r = project.recipe("name: p\nplugins: [planner.py]\nmodel:\n  source: ./model\ntargets:\n"
                       "  a:\n    steps:\n      - bad-planner: {}\n")
    done = run_cli(str(r), "--dry-run", "--cache", str(project.cache), timeout=30)
    assert done.returncode == 1, done.stderr
    err = done.stderr
    assert "internal error" not in err and "please report" not in err
    assert f"failed while planning its use at {r}:8:9" in err, err
    assert "KeyError: 'missing'" in err
    assert f"{project.root / 'planner.py'}:22" in err, err


STEP = '''\
from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator.step import Step, StepContext


class P(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Trap(Step):
    name = "trap"
    version = "1"
    Params = P
    outputs = {{"model": {output!r}}}
    input_formats = {{"model": ("any",)}}
    output_formats = {{"model": {fmt!r}}}
    toolchain = {toolchain}
    optional_toolchain = {optional}

    def run(self, ctx: StepContext) -> dict[str, Any]:
        ctx.output("model").write_text("x")
        return {{}}
'''


@pytest.mark.parametrize("case,fix", [
    ({"fmt": "onxx"}, "format 'onxx' is unknown; did you mean 'onnx'?"),
    ({"fmt": "tensorrt-engine", "output": "m.plan"},
     "output 'model' is the file 'm.plan' but its format 'tensorrt-engine' is a folder"),
    ({"fmt": "onnx", "output": "onnx/"}, "output 'model' is the folder 'onnx/' but its format "
                                         "'onnx' is a file"),
    ({"optional": ("onnx",)}, "optional_toolchain lists ['onnx'], which are not in its toolchain"),
])
def test_a_step_that_cannot_work_is_refused_when_it_loads(project: Project, case: dict,
                                                           fix: str) -> None:
    """Issue 18, item 14: each was accepted, and caught (if at all) only after the step ran."""
    fields = {"output": "model.txt", "fmt": "text", "toolchain": (), "optional": (), **case}
    (project.root / "trap.py").write_text(STEP.format(**fields))
    r = project.recipe("name: t\nplugins: [trap.py]\nmodel:\n  source: ./model\ntargets:\n"
                       "  a:\n    steps:\n      - trap: {}\n")
    done = run_cli(str(r), "--dry-run", "--cache", str(project.cache), timeout=30)
    assert done.returncode == 1, done.stderr
    assert fix in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


WRITER = '''\
import os
from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator.step import Step, StepContext


class P(BaseModel):
    model_config = ConfigDict(extra="forbid")
    how: str = "append"


class Writer(Step):
    name = "writer"
    version = "1"
    Params = P
    outputs = {"model": "model.txt"}
    input_formats = {"model": ("any",)}
    output_formats = {"model": "text"}

    def run(self, ctx: StepContext) -> dict[str, Any]:
        src = ctx.input("model")
        if ctx.params.how == "append":
            with open(src, "a") as f:
                f.write("tampered")
        else:  # write a new file and rename it over the input (atomic-write style)
            tmp = src.parent / "new.tmp"
            tmp.write_text("tampered")
            os.replace(tmp, src)
        ctx.output("model").write_text("done")
        return {}
'''


@pytest.mark.parametrize("how", ["append", "rename"])
def test_a_step_that_writes_into_its_input_never_changes_the_cache(project: Project,
                                                                    how: str) -> None:
    """Issue 18, item 15: under --in-process the input was a hard link into the cache, so the
    write changed the stored blob; and renaming over a read-only input was a raw OSError
    [Errno 16] in a build."""
    import json

    (project.root / "writer.py").write_text(WRITER)
    r = project.recipe("name: w\nplugins: [fake_steps.py, writer.py]\nmodel:\n  source: ./model\n"
                       "targets:\n  a:\n    steps:\n      - fake-upper: {}\n"
                       f"      - writer: {{how: {how}}}\n")
    args = ("--cache", str(project.cache), "--out", str(project.out))
    built = run_cli(str(r), "--only", "a/1:fake-upper", *args, timeout=60)
    assert built.returncode == 0, built.stderr
    done = run_cli(str(r), "--only", "a/2:writer", "--in-process", *args, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "wrote into its input 'model'" in done.stderr and "Traceback" not in done.stderr
    verify = run_cli("cache", "verify", "--cache", str(project.cache), timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr  # every blob as it was stored
    build = run_cli(str(r), *args, "--json", timeout=60)
    assert build.returncode == 2
    task = [t for t in json.loads(build.stdout)["tasks"] if t["label"] == "a/2:writer"][0]
    assert "into its input 'model'" in task["log_tail"], task["log_tail"]
    assert "Errno 16" not in task["log_tail"] and "Traceback" not in task["log_tail"]
