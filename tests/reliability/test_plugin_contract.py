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
