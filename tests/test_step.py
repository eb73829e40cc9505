"""The step contract: typed params, the one planning hook, checks judged by their own verdict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from orchestrator.errors import FatalError
from orchestrator.registry import Registry
from orchestrator.step import (
    Hardware,
    PlanContext,
    Planned,
    Resources,
    Step,
    StepContext,
    Verdict,
    at_defaults,
)


class WordParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    word: str = "hi"
    level: int = 0


class Typed(Step[WordParams]):
    name = "typed"
    version = "1"
    inputs = ("model", "samples")
    outputs = {"model": "m.txt"}
    input_formats = {"model": ("any",)}
    output_formats = {"model": "text"}
    toolchain = ("pydantic",)
    resources = Resources(cpu=2)

    def run(self, ctx: StepContext[WordParams]) -> dict[str, Any]:
        ctx.output("model").write_text(ctx.params.word)
        return {}


def test_params_come_from_the_type_argument_and_the_default_plan_reads_attributes() -> None:
    assert Typed.Params is WordParams
    planned = Typed.plan(WordParams(word="x"), PlanContext())
    assert planned == Planned(WordParams(word="x"), ("model", "samples"), ("pydantic",),
                              Resources(cpu=2))
    assert Registry(entry_points=False).register(Typed, "test", "d", "1", {}).cls is Typed


def test_at_defaults_puts_unused_params_back() -> None:
    p = at_defaults(WordParams(word="x", level=3), ("level",))
    assert p == WordParams(word="x", level=0)


def test_a_step_with_the_old_hooks_is_refused_with_what_replaces_them() -> None:
    class Old(Typed):
        name = "old"

        @classmethod
        def complete_params(cls, params: Any, model: Any) -> Any:
            return params

        @classmethod
        def gate(cls, params: Any, metrics: Any, reference: Any) -> list[str]:
            return []

    with pytest.raises(FatalError) as e:
        Registry(entry_points=False).register(Old, "plugin x.py", "d", "1", {})
    assert "complete_params() is no longer called: implement plan() instead" in str(e.value)
    assert "gate() is no longer called: implement judge() instead" in str(e.value)


def test_plan_sees_the_hardware_formats_shapes_and_role(project: Any) -> None:
    """The engine passes one PlanContext per task; a plan that asks for an input the step does
    not declare is a clear error naming the step."""
    seen: list[PlanContext] = []

    class Spy(Typed):
        name = "spy"

        @classmethod
        def plan(cls, params: WordParams, at: PlanContext) -> Planned[WordParams]:
            seen.append(at)
            inputs = ("model",) if params.word == "ok" else ("model", "reference")
            return cls.planned(params, inputs=inputs, unused=("level",))

    from orchestrator.plan.graph import compile_graph
    from orchestrator.recipe import load_recipe

    reg = Registry(entry_points=False)
    reg.register(Spy, "test", "d", "1", {})
    recipe = project.recipe("model: {source: ./model}\ninputs: {shapes: {batch: [3]}}\n"
                            "targets:\n  t:\n    hardware: {device: cuda}\n"
                            "    steps: [{spy: {word: ok, level: 5}}]\n")
    graph = compile_graph([load_recipe(recipe, reg)])
    [task] = graph.tasks()
    assert task.params == {"word": "ok", "level": 0} and task.toolchain == ("pydantic",)
    assert seen[0].hardware == Hardware(device="cuda") and seen[0].shapes["batch"] == [3]
    assert seen[0].input_formats == {"model": "hf-model", "source": "hf-model"}
    assert seen[0].reference is False
    recipe.write_text(recipe.read_text().replace("word: ok", "word: bad"))
    with pytest.raises(FatalError, match=r"step 'spy' \(test\): plan\(\) returned inputs "
                                         r"\['model', 'reference'\]"):
        compile_graph([load_recipe(recipe, reg)])


def test_the_manifest_section_and_rebench_come_from_attributes() -> None:
    from orchestrator.steps.benchmark import Benchmark
    from orchestrator.steps.parity import Parity

    assert Benchmark.measures_speed and Benchmark.exclusive
    assert Benchmark.manifest_section == "benchmark" and Parity.manifest_section == "checks"
    assert not Parity.measures_speed
    assert Step.judge(WordParams(), {"a": 1}, None) == Verdict({"a": 1}, [])


def test_mypy_checks_ctx_params_against_the_step_type(tmp_path: Path) -> None:
    """Step[P] makes ctx.params a P: a typo in a field name is a type error."""
    src = tmp_path / "typed_step.py"
    src.write_text(
        "from typing import Any\n"
        "from pydantic import BaseModel\n"
        "from orchestrator.step import Step, StepContext\n\n"
        "class P(BaseModel):\n    word: str = 'x'\n\n"
        "class S(Step[P]):\n"
        "    def run(self, ctx: StepContext[P]) -> dict[str, Any]:\n"
        "        return {'n': len(ctx.params.wrod)}\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent",
                          "--config-file", str(root / "pyproject.toml"), str(src)],
                         capture_output=True, text=True, cwd=root)
    assert '"P" has no attribute "wrod"' in out.stdout, out.stdout + out.stderr


def test_docs_plugins_md_covers_every_attribute_and_ctx_member() -> None:
    """docs/plugins.md is the whole contract: every class attribute, hook, ctx member and plan
    field is named there."""
    import dataclasses

    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    attrs = [n for n in Step.__annotations__]
    hooks = ["plan", "planned", "judge", "run"]
    ctx = [f.name for f in dataclasses.fields(StepContext)] + ["input", "output", "log", "warn"]
    planning = [f.name for f in dataclasses.fields(PlanContext)] + \
        [f.name for f in dataclasses.fields(Planned)] + [f.name for f in dataclasses.fields(Verdict)]
    import re

    spans = " ".join(re.findall(r"`[^`\n]+`", text))  # names in code spans
    missing = [n for n in attrs + hooks + ctx + planning if not re.search(rf"\b{n}\b", spans)]
    assert not missing, missing


TIMER = '''
import time
from typing import Any
from pydantic import BaseModel, ConfigDict
from orchestrator.step import Step, StepContext, Verdict


class TP(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_ms: float = 1e9


class Timer(Step[TP]):
    name = "timer"
    version = "1"
    kind = "check"
    inputs = ("model",)
    input_formats = {"model": ("any",)}
    measures_speed = True  # --rebench measures it again, as the benchmark
    gate_fields = ("max_ms",)

    def run(self, ctx: StepContext[TP]) -> dict[str, Any]:
        t = time.perf_counter()
        ctx.input("model").read_bytes()
        return {"ms": (time.perf_counter() - t) * 1000}

    @classmethod
    def judge(cls, params: TP, metrics: dict[str, Any], reference: Any) -> Verdict:
        return Verdict(metrics, [] if metrics["ms"] <= params.max_ms else ["too slow"])
'''


def test_rebench_reruns_the_checks_that_measure_speed_by_their_attribute(project: Any,
                                                                          capsys: Any) -> None:
    (project.root / "timer.py").write_text(TIMER)
    recipe = project.recipe("plugins: [fake_steps.py, timer.py]\nmodel: {source: ./model}\n"
                            "targets:\n  t:\n    steps: [{fake-upper: {}}]\n"
                            "    checks: {timer: {}, fake-length: {}}\n")
    assert project.build_json(recipe, capsys)["rc"] == 0
    again = project.build_json(recipe, capsys, "--rebench")
    status = {label: t["status"] for label, t in again["by_label"].items()}
    assert status == {"t/1:fake-upper": "hit", "t/check:timer": "run",
                      "t/check:fake-length": "hit"}
    assert project.build_json(recipe, capsys)["by_label"]["t/check:timer"]["status"] == "hit"
