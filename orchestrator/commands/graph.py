"""`deploy-build graph RECIPE... --format mermaid|dot`: the task DAG, for a PR description.

One node per task: a task shared by several targets (or recipes) is one node that names them
all. Each node is marked with what happened to it in the last build that planned it (`hit`,
`run`, `fail`, `skip`, from the cache's last-run record) or, for a task no build has planned
yet, with its plan now (`hit` when cached, `pending` when it would run, `skip`).

A check whose task ran (or hit) but whose gate a target failed is marked `gate` (`FAILED GATE`,
with the target and why), not as a plain run: the target's last judged manifest (in `--out`,
`build/<recipe>/<target>/manifest.json`) says so (`passed: false` in that check's section), and
its section's key is the task's key in the plan now, so a gate failed by an older build of the
task never marks the new one.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from orchestrator.errors import EXIT_OK
from orchestrator.review.escape import one_line

MARKS = ("hit", "run", "fail", "gate", "skip", "pending")
COLORS = {"hit": "#d8f0d8", "run": "#d8e4f8", "fail": "#f8d0d0", "gate": "#f8d0d0",
          "skip": "#eeeeee", "pending": "#fff4cc"}
WORDS = {"gate": "FAILED GATE"}
STROKES = {"gate": "#c00,stroke-width:2px"}


def node_id(node: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", node)


def marks(graph: Any, plan: Any, last: dict[str, dict[str, Any]],
          gates: dict[str, list[tuple[str, str, str]]] | None = None) -> dict[str, str]:
    """Per task id: what the last build did with it, while that still holds for the plan now
    (a cached task: hit or run with the same key, `gate` when a target failed its gate on that
    very key; a task to run: fail or skip last time)."""
    out: dict[str, str] = {}
    for task in graph.tasks():
        d = plan.decisions[task.id]
        seen = last.get(task.id) or {}
        status, same_key = seen.get("status"), d.key is None or seen.get("key") == d.key
        if d.status == "HIT":
            out[task.id] = status if status in ("hit", "run") and same_key else "hit"
            if any(key == d.key for _, key, _ in (gates or {}).get(task.id, [])):
                out[task.id] = "gate"
        elif d.status == "RUN":
            out[task.id] = status if status in ("fail", "skip") and same_key else "pending"
        else:
            out[task.id] = "skip"
    return out


def _manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def gate_failures(graph: Any, out: Path) -> dict[str, list[tuple[str, str, str]]]:
    """Per check task id: (target, the task's key it was judged on, why) of each target whose
    last judged manifest under ``out`` failed that check's gate."""
    found: dict[str, list[tuple[str, str, str]]] = {}
    for tp in graph.targets:
        m = _manifest(out / tp.recipe.name / tp.name / "manifest.json")
        if m.get("status") != "failed":
            continue
        listed = m.get("failures")
        failures: list[Any] = listed if isinstance(listed, list) else []
        for name, cp in sorted(tp.checks.items()):
            where = graph.task(cp.task).info.cls.manifest_section
            section = (m.get("checks") or {}).get(name) if where == "checks" else m.get(where)
            if not isinstance(section, dict) or section.get("passed") is not False:
                continue
            why = next((str(f).removeprefix(f"check {name}: ") for f in failures
                        if str(f).startswith(f"check {name}: ")), "gate failed")
            target = f"{tp.recipe.name}/{tp.name}" if graph.task(cp.task).qualified else tp.name
            found.setdefault(cp.task, []).append((target, str(section.get("key")), why))
    return found


def _targets(task: Any) -> str:
    names = sorted({f"{r}/{t}" if task.qualified else t for r, t, _ in task.labels})
    return ("shared by " if len(names) > 1 else "") + ", ".join(names)


def nodes(graph: Any, mark: dict[str, str], gates: dict[str, list[tuple[str, str, str]]] | None = None
          ) -> list[tuple[str, list[str], str]]:
    """(node id, label lines, mark) for every source and task, in a stable order; a failed
    gate's node says which target failed it and why."""
    out: list[tuple[str, list[str], str]] = []
    for node in sorted(n for n in graph.dag.nodes if n.startswith("src:")):
        src = graph.dag.nodes[node]["obj"]
        out.append((node, [f"{src.recipe}: {src.what}"], "source"))
    for task in graph.tasks():
        pos = sorted({p for _, _, p in task.labels})
        m = mark[task.id]
        label = [" / ".join(pos), _targets(task), WORDS.get(m, m.upper())]
        if m == "gate":
            label += [f"{target}: {why}" for target, _, why in (gates or {}).get(task.id, [])][:3]
        out.append((task.id, label, m))
    return out


MERMAID_ENTITIES = {"#": "#35;", '"': "#quot;", "<": "#60;", ">": "#62;", "`": "#96;", "&": "#38;"}


def mermaid_text(text: str) -> str:
    """A label line as Mermaid text on one line: no quote, tag, backtick or entity of its own."""
    return "".join(MERMAID_ENTITIES.get(ch, ch) for ch in one_line(text))


def mermaid(graph: Any, mark: dict[str, str],
            gates: dict[str, list[tuple[str, str, str]]] | None = None) -> str:
    lines = ["flowchart LR"]
    for node, label, m in nodes(graph, mark, gates):
        text = "<br>".join(mermaid_text(x) for x in label)
        shape = f'[("{text}")]' if m == "source" else f'["{text}"]:::{m}'
        lines.append(f"  {node_id(node)}{shape}")
    for a, b in sorted(graph.dag.edges):
        lines.append(f"  {node_id(a)} --> {node_id(b)}")
    for m in MARKS:
        lines.append(f"  classDef {m} fill:{COLORS[m]},stroke:{STROKES.get(m, '#555')}")
    return "\n".join(lines) + "\n"


def dot(graph: Any, mark: dict[str, str],
        gates: dict[str, list[tuple[str, str, str]]] | None = None) -> str:
    lines = ["digraph deploy_build {", "  rankdir=LR;", "  node [shape=box, style=filled];"]
    for node, label, m in nodes(graph, mark, gates):
        text = json.dumps("\n".join(label))
        if m == "source":
            lines.append(f"  {json.dumps(node)} [label={text}, shape=cylinder, fillcolor=white];")
        else:
            lines.append(f"  {json.dumps(node)} [label={text}, class={m}, "
                         f"fillcolor={json.dumps(COLORS[m])}];")
    for a, b in sorted(graph.dag.edges):
        lines.append(f"  {json.dumps(a)} -> {json.dumps(b)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from orchestrator.review.history import read_last_run
    from orchestrator.session import open_session

    s = open_session(args)
    try:
        gates = gate_failures(s.graph, Path(s.out))
        mark = marks(s.graph, s.plan, read_last_run(s.store.root), gates)
    finally:
        s.store.close()
    draw = mermaid if args.format == "mermaid" else dot
    print(draw(s.graph, mark, gates), end="")
    return EXIT_OK
