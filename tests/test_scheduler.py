"""The scheduler (orchestrator/run/scheduler.py) on its own: it runs a plan's RUN tasks in DAG order,
honours order-only dependencies (Task.after), skips what a failure cuts off, and records
entries for successful tasks only. Fake steps: real worker processes, no model."""

from __future__ import annotations

from typing import Any

from conftest import Project

from orchestrator.plan import make_plan, resolve_sources
from orchestrator.plan.graph import compile_graph
from orchestrator.plan.sources import StatCache
from orchestrator.recipe import load_recipe
from orchestrator.run.scheduler import Options, Scheduler
from orchestrator.store.local import LocalStore

RECIPE = """\
name: s
plugins: [fake_steps.py]
model:
  source: ./model
targets:
  a:
    steps:
      - fake-upper: {suffix: "!"}
      - fake-tree: {files: 2}
    checks:
      fake-length: {max_bytes: 1000}
  b:
    steps:
      - fake-upper: {suffix: "!"}
      - fake-fail: {}
"""


class Events:
    """A reporter that records what happened, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def task_start(self, task: Any, reasons: list[str]) -> None:
        self.seen.append(("start", task.label))

    def task_wait(self, task: Any, why: str) -> None:
        self.seen.append(("wait", task.label))

    def task_done(self, task: Any, outcome: Any) -> None:
        self.seen.append((outcome.status, task.label))

    def tick(self, executor: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _run(project: Project, after: dict[str, list[str]] | None = None) -> tuple[Any, Events, Any]:
    graph = compile_graph([load_recipe(project.recipe(RECIPE))])
    by_label = {t.label: t for t in graph.tasks()}
    for label, before in (after or {}).items():
        by_label[label].after.extend(by_label[b].id for b in before)
    store = LocalStore(project.cache)
    plan = make_plan(graph, store, resolve_sources(graph, StatCache(store.index)))
    events = Events()
    outcomes = Scheduler(plan, store, Options(2), events, {}).run()
    return {t.label: outcomes[t.id] for t in graph.tasks()}, events, store


def test_tasks_run_in_dag_order_and_a_failure_skips_what_it_cuts_off(project: Project) -> None:
    outcomes, events, store = _run(project)
    assert outcomes["a/1:fake-upper"].status == "run"  # shared by a and b: run once
    assert outcomes["b/2:fake-fail"].status == "fail"
    assert {o.status for label, o in outcomes.items() if label.startswith("a/")} == {"run"}
    order = [label for what, label in events.seen if what == "start"]
    assert order.index("a/1:fake-upper") < order.index("a/2:fake-tree") \
        < order.index("a/check:fake-length")
    # entries for what ran, none for the failure
    assert store.get_action(outcomes["a/2:fake-tree"].key) is not None
    assert store.get_action(outcomes["b/2:fake-fail"].key) is None
    store.close()


def test_an_order_only_dependency_holds_a_task_back(project: Project) -> None:
    """Task.after (cheap gates first): a/2:fake-tree waits for b's failing step although it
    does not read its output."""
    outcomes, events, store = _run(project, after={"a/2:fake-tree": ["b/2:fake-fail"]})
    finished = [label for what, label in events.seen if what in ("run", "fail")]
    started = [label for what, label in events.seen if what == "start"]
    assert finished.index("b/2:fake-fail") < started.index("a/2:fake-tree")
    assert outcomes["a/2:fake-tree"].status == "run"
    store.close()
