"""Issue 8: step failures of every kind (an exception, os._exit, a segfault, a hang past a per-step
timeout, memory past a per-step limit) in one build: each task fails alone with its reason and log
tail, the healthy target is built, nothing is cached for a failure (the next build runs it again).
Limits are per step use > recipe > step class, validated with file:line:col, and never keyed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import Project

from orchestrator.errors import FatalError
from orchestrator.recipe import load_recipe

RECIPE = """\
name: demo
plugins: [fake_steps.py]
model:
  source: ./model
limits: {timeout_s: 20}
targets:
  healthy:
    steps:
      - fake-upper: {suffix: "!"}
  raises:
    steps:
      - fake-fail: {how: raise}
  exits:
    steps:
      - fake-fail: {how: exit}
  segfaults:
    steps:
      - fake-fail: {how: segfault}
  hangs:
    steps:
      - fake-fail: {how: hang, seconds: 60}
        limits: {timeout_s: 3}
  grows:
    steps:
      - fake-fail: {how: memory, mb: 400, seconds: 60}
        limits: {max_memory_mb: 100}
"""

WHY = {
    "raises": "worker exited with code 1",
    "exits": "worker exited with code 7",
    "segfaults": "worker killed by SIGSEGV",
    "hangs": "timed out after 3.",
    "grows": "MB, over its limit of 100 MB",
}


def test_every_kind_of_step_failure_fails_alone(project: Project, capsys) -> None:
    r = project.recipe(RECIPE)
    t0 = time.monotonic()
    s = project.build_json(r, capsys, "-j", "6")
    assert time.monotonic() - t0 < 20  # the hang and the allocation were cut short
    assert s["rc"] == 2
    assert s["targets"]["demo/healthy"]["status"] == "ok"
    assert s["by_label"]["healthy/1:fake-upper"]["status"] == "run"
    for target, why in WHY.items():
        t = s["by_label"][f"{target}/1:fake-fail"]
        assert t["status"] == "fail", (target, t)
        assert t["error"].startswith(f"{target}/1:fake-fail failed ("), t["error"]
        assert why in t["error"], (target, t["error"])
        assert "about to fail" in t["log_tail"], (target, t["log_tail"])
        assert s["targets"][f"demo/{target}"]["status"] == "failed"
    hang = s["by_label"]["hangs/1:fake-fail"]["error"]
    assert f"; timeout_s 3 set at {r}:22:29) after 3." in hang, hang
    grow = s["by_label"]["grows/1:fake-fail"]["error"]
    assert f"; max_memory_mb set at {r}:26:33) after " in grow, grow
    used = int(grow.split("failed (used ")[1].split(" MB")[0])
    assert 100 < used < 400, grow
    assert "boom on purpose" in s["by_label"]["raises/1:fake-fail"]["log_tail"]
    # nothing cached for a failure: the next build runs each again; the healthy task is a hit
    s2 = project.build_json(r, capsys, "-j", "6", "-t", "hangs", "-t", "exits", "-t", "healthy")
    assert s2["by_label"]["healthy/1:fake-upper"]["status"] == "hit"
    assert s2["by_label"]["exits/1:fake-fail"]["status"] == "fail"
    assert "timed out" in s2["by_label"]["hangs/1:fake-fail"]["error"]


def test_limits_stay_out_of_the_key(project: Project, capsys) -> None:
    """A limit changes no output: setting or changing one rebuilds nothing."""
    r = project.recipe(RECIPE.replace("limits: {timeout_s: 20}\n", ""))
    s = project.build_json(r, capsys, "-t", "healthy")
    assert s["by_label"]["healthy/1:fake-upper"]["status"] == "run"
    project.recipe(RECIPE.replace('- fake-upper: {suffix: "!"}',
                                  '- fake-upper: {suffix: "!"}\n        limits: {max_memory_mb: 500}'))
    s = project.build_json(r, capsys, "-t", "healthy")
    assert s["by_label"]["healthy/1:fake-upper"]["status"] == "hit"


PLUGIN = """\
from orchestrator.step import Step


class Limited(Step):
    name = "limited"
    version = "1"
    outputs = {"model": "model.txt"}
    input_formats = {"model": ("any",)}
    output_formats = {"model": "text"}
    timeout_s = 300
    max_memory_mb = 2000

    def run(self, ctx):
        return {}
"""


def _limits(project: Project, recipe: str) -> tuple[tuple[float, str] | None, ...]:
    (project.root / "limited.py").write_text(PLUGIN)
    r = project.recipe(recipe)
    use = load_recipe(r).steps["a"][0]
    return tuple(None if lim is None else (lim.value, lim.where.replace(str(r), "F"))
                 for lim in (use.limits.timeout_s, use.limits.max_memory_mb))


def test_limit_precedence_step_use_over_recipe_over_step_class(project: Project) -> None:
    head = "plugins: [limited.py]\nmodel: {source: ./model}\n"
    steps = "targets:\n  a:\n    steps:\n      - limited: {}\n"
    assert _limits(project, head + steps) == (
        (300, "the default of step 'limited'"), (2000, "the default of step 'limited'"))
    assert _limits(project, head + "limits: {timeout_s: 60}\n" + steps) == (
        (60, "set at F:3:21"), (2000, "the default of step 'limited'"))
    assert _limits(project, head + "limits: {timeout_s: 60}\n" + steps
                   + "        limits: {timeout_s: 5, max_memory_mb: 64}\n") == (
        (5, "set at F:8:29"), (64, "set at F:8:47"))


CHECK_PLUGIN = """

class LimitedCheck(Step):
    name = "limited-check"
    version = "1"
    kind = "check"
    input_formats = {"model": ("any",)}
    timeout_s = 300
    max_memory_mb = 2000

    def run(self, ctx):
        return {}
"""


def test_a_check_takes_its_own_limits_among_its_params(project: Project) -> None:
    (project.root / "limited.py").write_text(PLUGIN + CHECK_PLUGIN)
    head = "plugins: [limited.py]\nmodel: {source: ./model}\nlimits: {timeout_s: 60}\n"
    body = "targets:\n  a:\n    steps:\n      - limited: {}\n    checks:\n      limited-check: "
    r = project.recipe(head + body + "{limits: {timeout_s: 7}}\n")
    lim = load_recipe(r).checks["a"][0].limits
    assert lim.timeout_s is not None and lim.timeout_s.value == 7
    assert lim.timeout_s.where == f"set at {r}:9:43"
    assert lim.max_memory_mb is not None and lim.max_memory_mb.where == \
        "the default of check 'limited-check'"
    r = project.recipe(head + body + "{}\n")
    lim = load_recipe(r).checks["a"][0].limits
    assert lim.timeout_s is not None and lim.timeout_s.where == f"set at {r}:3:21"
    r = project.recipe(head + body + "{limits: {timeout_s: -3}}\n")
    with pytest.raises(FatalError, match=rf"invalid timeout_s in limits of check 'limited-check' "
                                         rf"at {r}:9:43"):
        load_recipe(r)


@pytest.mark.parametrize("limits,expected", [
    ("{timeout_s: 0}", "invalid timeout_s in limits of step 'fake-upper' at {f}:9:29: "
                       "Input should be greater than 0"),
    ("{max_memory_mb: -5}", "invalid max_memory_mb in limits of step 'fake-upper' at {f}:9:33"),
    ("{timeout_s: ten}", "invalid timeout_s in limits of step 'fake-upper' at {f}:9:29"),
    ("{timeout: 5}", "unknown key 'timeout' in limits of step 'fake-upper' at {f}:9:18; "
                     "did you mean 'timeout_s'?"),
    ("{timeout_s: true}", "invalid timeout_s in limits of step 'fake-upper' at {f}:9:29: "
                          "Value error, give a number, not true"),
])
def test_bad_limit_fails_at_load_with_a_location(project: Project, capsys, limits: str,
                                                 expected: str) -> None:
    text = RECIPE.split("  raises:")[0].replace("limits: {timeout_s: 20}\n", "")
    f = project.recipe(text + f"        limits: {limits}\n")
    capsys.readouterr()
    assert project.run(str(f)) == 1
    err = capsys.readouterr().err
    assert expected.format(f=f) in err, err
    assert not project.out.exists()


def test_bad_recipe_wide_limit(project: Project, tmp_path: Path) -> None:
    f = project.recipe(RECIPE.replace("limits: {timeout_s: 20}", "limits: {timeout_s: -1}"))
    with pytest.raises(FatalError, match=rf"invalid limits.timeout_s at {f}:5:21: "):
        load_recipe(f)
