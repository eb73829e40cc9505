"""The planner (orchestrator/plan/__init__.py): a pure pass over the graph and the store that decides, for
every task, HIT, RUN with its reasons, or SKIP with why; and planning again from the same inputs."""

from __future__ import annotations

from conftest import FAKE_RECIPE, Project

from orchestrator.plan import make_plan, resolve_sources
from orchestrator.plan.graph import compile_graph
from orchestrator.plan.sources import StatCache
from orchestrator.recipe import load_recipe
from orchestrator.store.local import LocalStore


def _plan(project: Project, **kw: object):  # type: ignore[no-untyped-def]
    graph = compile_graph([load_recipe(project.recipe(FAKE_RECIPE))])
    store = LocalStore(project.cache)
    return graph, store, make_plan(graph, store, resolve_sources(graph, StatCache(store.index)),
                                   **kw)  # type: ignore[arg-type]


def test_a_new_build_runs_everything_with_a_reason(project: Project) -> None:
    graph, store, plan = _plan(project)
    assert {d.status for d in plan.decisions.values()} == {"RUN"}
    assert all(d.reasons for d in plan.decisions.values())
    store.close()


def test_a_skipped_task_skips_its_downstream_and_planning_again_keeps_both(project: Project) -> None:
    """Issue 18, item 10: the re-plan after a remote fetch forgot the machine's skips, so a task
    this machine cannot run was planned to run. Plan.replan is one call made from everything the
    plan was made from."""
    graph, store, _ = _plan(project)
    first = graph.tasks()[0]  # a/1:fake-upper, which every other task of a needs
    _, _, plan = _plan(project, skips={first.id: "needs a GPU this machine lacks"}, force=True)
    assert plan.decisions[first.id].status == "SKIP"
    downstream = [t for t in graph.tasks() if first.id in graph.dag.ancestors(t.id)]
    assert downstream and all(plan.decisions[t.id].status == "SKIP" for t in downstream)
    again = plan.replan(store)
    assert {k: (d.status, d.reasons) for k, d in again.decisions.items()} == \
        {k: (d.status, d.reasons) for k, d in plan.decisions.items()}
    assert again.force and again.skips == plan.skips
    store.close()
