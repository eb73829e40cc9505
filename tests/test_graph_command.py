"""`deploy-build graph`: Mermaid and dot, parsed back; shared tasks; marks from the last build."""

from __future__ import annotations

import json
import re

from conftest import FAKE_RECIPE, Project

NODE = re.compile(r'^  (\w+)(?:\[\("(.*)"\)\]|\["(.*)"\]:::(\w+))$')
EDGE = re.compile(r"^  (\w+) --> (\w+)$")


def parse_mermaid(text: str) -> tuple[dict[str, tuple[list[str], str]], set[tuple[str, str]]]:
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    nodes: dict[str, tuple[list[str], str]] = {}
    edges: set[tuple[str, str]] = set()
    for line in lines[1:]:
        if line.startswith("  classDef "):
            continue
        if m := EDGE.match(line):
            edges.add((m[1], m[2]))
        elif m := NODE.match(line):
            label = m[2] if m[2] is not None else m[3]
            nodes[m[1]] = (label.split("<br>"), m[4] or "source")
        else:
            raise AssertionError(f"unparsed mermaid line {line!r}")
    assert all(a in nodes and b in nodes for a, b in edges)
    return nodes, edges


def graph(project: Project, capsys, recipe, *args: str) -> str:
    capsys.readouterr()
    assert project.run("graph", str(recipe), *args) == 0
    return capsys.readouterr().out


def by_step(nodes: dict[str, tuple[list[str], str]]) -> dict[str, tuple[list[str], str]]:
    return {label[0]: (label, mark) for label, mark in nodes.values()}


def test_mermaid_shows_shared_tasks_and_marks_after_builds(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    nodes, edges = parse_mermaid(graph(project, capsys, r))
    steps = by_step(nodes)
    assert set(steps) == {"demo: model", "1:fake-upper", "2:fake-tree", "2:fake-const",
                          "check:fake-length"}
    assert steps["1:fake-upper"][0][1] == "shared by a, b"  # one node for both targets
    assert steps["2:fake-const"][0][1] == "b"
    assert {m for _, m in steps.values()} == {"source", "pending"}
    ids = {label[0]: i for i, (label, _) in nodes.items()}
    assert (ids["demo: model"], ids["1:fake-upper"]) in edges
    assert (ids["1:fake-upper"], ids["2:fake-tree"]) in edges
    assert (ids["1:fake-upper"], ids["2:fake-const"]) in edges
    assert (ids["2:fake-tree"], ids["check:fake-length"]) in edges
    assert (ids["demo: model"], ids["check:fake-length"]) in edges  # the check reads the source
    assert len(edges) == 5
    assert project.run(str(r)) == 0
    steps = by_step(parse_mermaid(graph(project, capsys, r))[0])
    assert {m for k, (_, m) in steps.items() if k != "demo: model"} == {"run"}
    assert steps["2:fake-tree"][0][2] == "RUN"
    assert project.run(str(r)) == 0
    steps = by_step(parse_mermaid(graph(project, capsys, r))[0])
    assert {m for k, (_, m) in steps.items() if k != "demo: model"} == {"hit"}
    # a param change not built yet: that task and its check would run; the rest is cached
    project.recipe(FAKE_RECIPE.replace("files: 2", "files: 3"))
    steps = by_step(parse_mermaid(graph(project, capsys, r))[0])
    assert steps["2:fake-tree"][1] == "pending" and steps["check:fake-length"][1] == "pending"
    assert steps["1:fake-upper"][1] == "hit" and steps["2:fake-const"][1] == "hit"


FAILING = """\
name: bad
plugins: [fake_steps.py]
model:
  source: ./model
targets:
  a:
    steps:
      - fake-upper: {}
      - fake-fail: {how: raise}
      - fake-const: {}
"""


def test_dot_marks_failed_and_skipped_tasks(project: Project, capsys) -> None:
    r = project.recipe(FAILING, "bad.yaml")
    assert project.run(str(r)) == 2
    text = graph(project, capsys, r, "--format", "dot")
    assert text.startswith("digraph deploy_build {\n") and text.endswith("}\n")
    node = re.compile(r'^  ("[^"]+") \[label=("(?:[^"\\]|\\.)*")(?:, class=(\w+))?')
    marks, edges = {}, set()
    for line in text.splitlines()[3:-1]:
        if m := re.match(r'^  ("[^"]+") -> ("[^"]+");$', line):
            edges.add((json.loads(m[1]), json.loads(m[2])))
        elif m := node.match(line):
            marks[json.loads(m[2]).split("\n")[0]] = m[3] or "source"
        else:
            raise AssertionError(f"unparsed dot line {line!r}")
    assert marks == {"bad: model": "source", "1:fake-upper": "run", "2:fake-fail": "fail",
                     "3:fake-const": "skip"}
    assert len(edges) == 3


def test_a_target_that_failed_its_gate_is_marked_failed_not_run(project: Project, capsys) -> None:
    """The check ran fine, the target failed its gate: the check's node reads FAILED GATE with
    the target and why (from the target's manifest), in Mermaid and dot, while that manifest
    judged the task's current key."""
    gated = FAKE_RECIPE.replace("max_bytes: 1000", "max_bytes: 5")
    r = project.recipe(gated)
    assert project.run(str(r)) == 2  # a failed its gate
    manifest = json.loads((project.out / "demo/a/manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["checks"]["fake-length"]["passed"] is False
    steps = by_step(parse_mermaid(graph(project, capsys, r))[0])
    label, mark = steps["check:fake-length"]
    assert mark == "gate" and label[2] == "FAILED GATE"
    why = manifest["failures"][0].removeprefix("check fake-length: ")
    assert "bytes > max_bytes 5" in why and label[3] == "a: " + why.replace(">", "#62;")
    assert steps["2:fake-tree"][1] == "run" and steps["2:fake-const"][1] == "run"
    text = graph(project, capsys, r, "--format", "dot")
    gate = [line for line in text.splitlines() if "class=gate" in line]
    assert len(gate) == 1 and json.dumps(f"FAILED GATE\na: {why}")[1:-1] in gate[0]
    assert project.run(str(r)) == 2  # a no-op build: still failed, the check now a hit
    assert by_step(parse_mermaid(graph(project, capsys, r))[0])["check:fake-length"][1] == "gate"
    # a looser gate (not keyed: the check is a hit): the target passes and the mark goes
    r = project.recipe(FAKE_RECIPE)
    assert project.run(str(r)) == 0
    assert by_step(parse_mermaid(graph(project, capsys, r))[0])["check:fake-length"][1] == "hit"
    # failed again, then the task's params change: the old verdict no longer marks it
    r = project.recipe(gated)
    assert project.run(str(r)) == 2
    r = project.recipe(gated.replace("files: 2", "files: 3"))
    assert by_step(parse_mermaid(graph(project, capsys, r))[0])["check:fake-length"][1] == "pending"


def test_mermaid_labels_hold_no_markup_of_their_own() -> None:
    from orchestrator.commands.graph import mermaid_text

    assert mermaid_text('a "b" <img src=x> `c` #12; &amp;\nd') == (
        "a #quot;b#quot; #60;img src=x#62; #96;c#96; #35;12; #38;amp; d")
