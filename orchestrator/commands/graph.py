"""`deploy-build graph RECIPE... --format mermaid|dot`: the task DAG, for a PR description.

One node per task: a task shared by several targets (or recipes) is one node that names them
all. Each node is marked with what happened to it in the last build that planned it (`hit`,
`run`, `fail`, `skip`, from the cache's last-run record) or, for a task no build has planned
yet, with its plan now (`hit` when cached, `pending` when it would run, `skip`).
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from orchestrator.errors import EXIT_OK

MARKS = ("hit", "run", "fail", "skip", "pending")
COLORS = {"hit": "#d8f0d8", "run": "#d8e4f8", "fail": "#f8d0d0", "skip": "#eeeeee",
          "pending": "#fff4cc"}


def node_id(node: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", node)


def marks(graph: Any, plan: Any, last: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Per task id: what the last build did with it, while that still holds for the plan now
    (a cached task: hit or run with the same key; a task to run: fail or skip last time)."""
    out: dict[str, str] = {}
    for task in graph.tasks():
        d = plan.decisions[task.id]
        seen = last.get(task.id) or {}
        status, same_key = seen.get("status"), d.key is None or seen.get("key") == d.key
        if d.status == "HIT":
            out[task.id] = status if status in ("hit", "run") and same_key else "hit"
        elif d.status == "RUN":
            out[task.id] = status if status in ("fail", "skip") and same_key else "pending"
        else:
            out[task.id] = "skip"
    return out


def _targets(task: Any) -> str:
    names = sorted({f"{r}/{t}" if task.qualified else t for r, t, _ in task.labels})
    return ("shared by " if len(names) > 1 else "") + ", ".join(names)


def nodes(graph: Any, mark: dict[str, str]) -> list[tuple[str, list[str], str]]:
    """(node id, label lines, mark) for every source and task, in a stable order."""
    out: list[tuple[str, list[str], str]] = []
    for node in sorted(n for n in graph.dag.nodes if n.startswith("src:")):
        src = graph.dag.nodes[node]["obj"]
        out.append((node, [f"{src.recipe}: {src.what}"], "source"))
    for task in graph.tasks():
        pos = sorted({p for _, _, p in task.labels})
        out.append((task.id, [" / ".join(pos), _targets(task), mark[task.id].upper()],
                    mark[task.id]))
    return out


def mermaid(graph: Any, mark: dict[str, str]) -> str:
    lines = ["flowchart LR"]
    for node, label, m in nodes(graph, mark):
        text = "<br>".join(x.replace('"', "#quot;") for x in label)
        shape = f'[("{text}")]' if m == "source" else f'["{text}"]:::{m}'
        lines.append(f"  {node_id(node)}{shape}")
    for a, b in sorted(graph.dag.edges):
        lines.append(f"  {node_id(a)} --> {node_id(b)}")
    for m in MARKS:
        lines.append(f"  classDef {m} fill:{COLORS[m]},stroke:#555")
    return "\n".join(lines) + "\n"


def dot(graph: Any, mark: dict[str, str]) -> str:
    lines = ["digraph deploy_build {", "  rankdir=LR;", "  node [shape=box, style=filled];"]
    for node, label, m in nodes(graph, mark):
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
    from orchestrator.commands.build import open_session
    from orchestrator.history import read_last_run

    s = open_session(args)
    try:
        mark = marks(s.graph, s.plan, read_last_run(s.store.root))
    finally:
        s.store.close()
    print(mermaid(s.graph, mark) if args.format == "mermaid" else dot(s.graph, mark), end="")
    return EXIT_OK
