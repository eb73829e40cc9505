"""Compile recipes into one DAG of tasks. Identical tasks (same step, params, inputs and
hardware properties) are one node, however many targets or recipes use them.

The DAG is a small class of its own (`Dag`), not networkx: a no-op build walks it, and importing
networkx would cost more than the whole walk."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator import formats
from orchestrator.errors import FatalError
from orchestrator.hashing import sha256_json
from orchestrator.recipe import Recipe, StepUse, TaskLimits
from orchestrator.registry import StepInfo
from orchestrator.step import Hardware, PlanContext, Planned, Resources, at_defaults

SOURCE_OUTPUT = "model"


class _Nodes(dict[str, dict[str, Any]]):
    """Node id -> attributes; ``nodes(data=True)`` gives (id, attributes) pairs, as in networkx."""

    def __call__(self, data: bool = False) -> Any:
        return list(self.items()) if data else list(self)


class Dag:
    """A directed acyclic graph of node ids with attributes: the subset of networkx's DiGraph
    that the build uses (nodes, edges, predecessors, successors, ancestors, descendants,
    subgraph), in insertion order."""

    def __init__(self) -> None:
        self.nodes = _Nodes()
        self._pred: dict[str, list[str]] = {}
        self._succ: dict[str, list[str]] = {}

    def add_node(self, node: str, **attrs: Any) -> None:
        self.nodes.setdefault(node, {}).update(attrs)
        self._pred.setdefault(node, [])
        self._succ.setdefault(node, [])

    def add_edge(self, u: str, v: str) -> None:
        for n in (u, v):
            if n not in self.nodes:
                self.add_node(n)
        if v not in self._succ[u]:
            self._succ[u].append(v)
            self._pred[v].append(u)

    def __contains__(self, node: object) -> bool:
        return node in self.nodes

    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)

    def number_of_nodes(self) -> int:
        return len(self.nodes)

    @property
    def edges(self) -> list[tuple[str, str]]:
        return [(u, v) for u, vs in self._succ.items() for v in vs]

    def predecessors(self, node: str) -> Iterator[str]:
        return iter(self._pred[node])

    def successors(self, node: str) -> Iterator[str]:
        return iter(self._succ[node])

    def ancestors(self, node: str) -> set[str]:
        return self._reach(node, self._pred)

    def descendants(self, node: str) -> set[str]:
        return self._reach(node, self._succ)

    @staticmethod
    def _reach(node: str, step: dict[str, list[str]]) -> set[str]:
        seen: set[str] = set()
        todo = list(step[node])
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(step[n])
        return seen

    def subgraph(self, keep: set[str]) -> Dag:
        """A copy holding only the nodes in keep and the edges between them."""
        sub = Dag()
        for n, attrs in self.nodes.items():
            if n in keep:
                sub.add_node(n, **attrs)
        for u, v in self.edges:
            if u in keep and v in keep:
                sub.add_edge(u, v)
        return sub

    def topological(self) -> list[str]:
        """Nodes in topological order; among the ready ones, lowest "seq" attribute first."""
        indegree = {n: len(p) for n, p in self._pred.items()}
        ready = [(self.nodes[n].get("seq", 0), n) for n, d in indegree.items() if d == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            _, n = heapq.heappop(ready)
            order.append(n)
            for m in self._succ[n]:
                indegree[m] -= 1
                if indegree[m] == 0:
                    heapq.heappush(ready, (self.nodes[m].get("seq", 0), m))
        return order


@dataclass(frozen=True)
class Source:
    """A graph input that is not built: the model source or the samples file of a recipe."""

    id: str
    recipe: str
    what: str  # "model" | "samples" | "labelled" (the field of the recipe's inputs)


@dataclass
class Task:
    id: str
    info: StepInfo
    params: dict[str, Any]  # validated, completed, JSON mode; gate fields removed: what is keyed and run
    inputs: dict[str, tuple[str, str]]  # input name -> (node id, output name)
    hardware: dict[str, Any]  # the target hardware properties the step depends on
    model: dict[str, Any]
    input_formats: dict[str, str] = field(default_factory=dict)  # input -> format it arrives in
    labels: list[tuple[str, str, str]] = field(default_factory=list)  # (recipe, target, position)
    reference: bool = False
    tokenizes: bool = False  # reads the sample texts and tokenizes them (keys the tokenizers)
    qualified: bool = False  # several recipes in one build: labels name the recipe too
    resources: Resources = field(default_factory=Resources)
    limits: TaskLimits | None = None  # per-step limits; never keyed (they change no output)
    exclusive: bool = False  # the step measures speed: the task runs alone (Step.exclusive)
    toolchain: tuple[str, ...] = ()  # what Step.plan declared: these distributions are keyed
    # tasks that must finish first without feeding it (never keyed): a speed check waits for its
    # targets' untimed checks, so a target that fails one is never timed (cheap gates first)
    after: list[str] = field(default_factory=list)

    @property
    def step(self) -> str:
        return self.info.name

    @property
    def label(self) -> str:
        recipe, target, pos = self.labels[0]
        return f"{recipe}/{target}/{pos}" if self.qualified else f"{target}/{pos}"


@dataclass(frozen=True)
class CheckPlan:
    """One check of one target: its task, its reference task, and this target's own use of it
    (the gates). Targets with the same chain share the check's task, never its gates."""

    task: str
    reference: str | None
    use: StepUse

    def ids(self) -> list[str]:
        return [self.task] + ([self.reference] if self.reference else [])


@dataclass
class TargetPlan:
    recipe: Recipe
    name: str  # a recipe target, or a search candidate ("<target>~<variant>[~N]")
    steps: list[str]  # task ids, in order
    checks: dict[str, CheckPlan]

    @property
    def search(self) -> str | None:
        """The search target this plan is a candidate of (None: a target of its own)."""
        return self.recipe.search_target(self.name) if self.recipe.candidate(self.name) else None

    def task_ids(self) -> list[str]:
        return self.steps + [i for c in self.checks.values() for i in c.ids()]


@dataclass
class BuildGraph:
    dag: Dag  # node attribute "obj" holds a Task or a Source
    targets: list[TargetPlan]
    recipes: list[Recipe]

    def task(self, node: str) -> Task:
        obj = self.dag.nodes[node]["obj"]
        assert isinstance(obj, Task)
        return obj

    def tasks(self) -> list[Task]:
        """Tasks in a stable topological order."""
        return [o for n in self.dag.topological() if isinstance(o := self.dag.nodes[n]["obj"], Task)]


@dataclass(frozen=True)
class _Where:
    """What every task of one target shares while it is being compiled."""

    recipe: str
    target: str
    hardware: dict[str, Any]
    model: dict[str, Any]
    src_model: str
    src_samples: str | None
    src_labelled: str | None = None


def _format_of(dag: Any, node: str, out: str) -> str:
    up = dag.nodes[node]["obj"]
    if isinstance(up, Task):
        return up.info.cls.output_formats.get(out, formats.ANY)
    return formats.HF_MODEL if up.what == "model" else formats.TEXT


def _wiring(at: _Where, upstream: tuple[str, str],
            reference_task: str | None) -> dict[str, tuple[str, str]]:
    """Where each input a step may read comes from, for one use at one place."""
    wired = {"model": upstream, "source": (at.src_model, SOURCE_OUTPUT)}
    if at.src_samples is not None:
        wired["samples"] = (at.src_samples, SOURCE_OUTPUT)
    if at.src_labelled is not None:
        wired["labelled"] = (at.src_labelled, SOURCE_OUTPUT)
    if reference_task is not None:
        wired["reference"] = (reference_task, "reference")
    return wired


def plan_use(use: StepUse, at: _Where, formats_in: dict[str, str],
             overrides: dict[str, Any] | None) -> Planned[Any]:
    """Ask the step's one planning hook what this task needs; unused params go back to their
    defaults."""
    cls = use.info.cls
    params = use.params.model_copy(update=overrides) if overrides else use.params
    ctx = PlanContext(Hardware.model_validate(at.hardware), formats_in,
                      dict(at.model.get("shapes", {})), reference=overrides is not None,
                      task=at.model.get("task", "feature-extraction"))
    try:
        planned = cls.plan(params, ctx)
    except ValueError as e:  # the step says this use cannot work, and why
        raise FatalError(f"{cls.kind if cls.kind == 'check' else 'step'} {use.info.name!r} at "
                         f"{use.where}: {e}") from None
    except Exception as e:
        if use.info.origin == "built-in":
            raise  # a bug of ours: the crash log
        raise FatalError(f"{cls.kind if cls.kind == 'check' else 'step'} {use.info.name!r} "
                         f"({use.info.origin}) failed while planning its use at {use.where}: "
                         f"{type(e).__name__}: {e} (in its plan(), at {_raised_at(e, cls)}); "
                         "fix the plugin, or leave the step out of the recipe") from None
    stray = [i for i in planned.inputs if i not in cls.inputs]
    if stray or not isinstance(planned.resources, Resources):
        raise FatalError(f"step {use.info.name!r} ({use.info.origin}): plan() returned inputs "
                         f"{list(planned.inputs)}, which must be among its inputs "
                         f"{list(cls.inputs)}, and an orchestrator.step.Resources; fix its plan()")
    if planned.unused:
        planned = replace(planned, params=at_defaults(planned.params, planned.unused))
    return planned


def _raised_at(e: BaseException, cls: type) -> str:
    """file:line of the plugin's own code where ``e`` came from (its last frame in the plugin's
    file), else of the deepest frame."""
    import sys
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    module = sys.modules.get(cls.__module__)
    own = getattr(module, "__file__", None)
    mine = [f for f in frames if own and f.filename == own] or frames[-1:]
    return f"{mine[-1].filename}:{mine[-1].lineno}" if mine else "unknown"


def _add_task(dag: Any, at: _Where, use: StepUse, upstream: tuple[str, str], position: str,
              overrides: dict[str, Any] | None = None, reference_task: str | None = None) -> str:
    """Add (or reuse) the task for one use of a step; identical tasks are one node."""
    cls = use.info.cls
    wired = _wiring(at, upstream, reference_task)
    planned = plan_use(use, at, {k: _format_of(dag, *v) for k, v in wired.items()}, overrides)
    pjson = planned.params.model_dump(mode="json", exclude=set(cls.gate_fields))
    inputs = {name: wired[name] for name in planned.inputs if name in wired}
    hw_used = {k: at.hardware.get(k) for k in cls.hardware_keys}
    model = {k: v for k, v in at.model.items() if k != "shapes"}  # shapes only via Step.plan
    identity = {
        "step": use.info.name, "plugin": use.info.dist, "params": pjson,
        "inputs": {k: list(v) for k, v in inputs.items()}, "hw": hw_used,
        "model": model,
    }
    tid = "t:" + sha256_json(identity)[:20]
    if tid not in dag:
        files = {name: _format_of(dag, node, out) for name, (node, out) in inputs.items()}
        task = Task(tid, use.info, pjson, inputs, hw_used, model,
                    files, reference=overrides is not None,
                    tokenizes="samples" in planned.inputs
                    and (cls.kind == "transform" or overrides is not None),
                    resources=planned.resources, exclusive=bool(cls.exclusive),
                    toolchain=tuple(planned.toolchain))
        dag.add_node(tid, obj=task, seq=dag.number_of_nodes())
        for up, _ in inputs.values():
            dag.add_edge(up, tid)
    task = dag.nodes[tid]["obj"]
    task.labels.append((at.recipe, at.target, position))
    task.limits = use.limits if task.limits is None else task.limits.loosest(use.limits)
    return tid


def _cheap_first(dag: Dag, checks: dict[str, CheckPlan]) -> None:
    """A target's speed checks run after its untimed checks (parity, accuracy, size)."""
    cheap = [i for c in checks.values() if not c.use.info.cls.measures_speed for i in c.ids()]
    for c in checks.values():
        if c.use.info.cls.measures_speed:
            task = dag.nodes[c.task]["obj"]
            task.after.extend(i for i in cheap if i not in task.after and i != c.task)


def compile_graph(recipes: list[Recipe], only_targets: list[str] | None = None) -> BuildGraph:
    dag = Dag()
    plans: list[TargetPlan] = []
    for recipe in recipes:
        m = recipe.model.model
        model_info = {
            "task": m.task,
            "trust_remote_code": m.trust_remote_code,
            "shapes": recipe.model.inputs.shapes.model_dump(),
        }
        src_model = Source(f"src:{recipe.name}:model", recipe.name, "model")
        dag.add_node(src_model.id, obj=src_model)
        src_samples = None
        if recipe.model.inputs.samples is not None:
            src_samples = Source(f"src:{recipe.name}:samples", recipe.name, "samples")
            dag.add_node(src_samples.id, obj=src_samples)
        src_labelled = None
        if recipe.model.inputs.labelled is not None:
            src_labelled = Source(f"src:{recipe.name}:labelled", recipe.name, "labelled")
            dag.add_node(src_labelled.id, obj=src_labelled)
        for tname in recipe.steps:  # targets and search candidates, in the recipe's order
            if only_targets and recipe.search_target(tname) not in only_targets:
                continue
            at = _Where(recipe.name, tname, recipe.hardware_of(tname).model_dump(), model_info,
                        src_model.id,
                        src_samples.id if src_samples else None,
                        src_labelled.id if src_labelled else None)
            upstream = (src_model.id, SOURCE_OUTPUT)
            ids: list[str] = []
            for i, use in enumerate(recipe.steps[tname]):
                tid = _add_task(dag, at, use, upstream, f"{i + 1}:{use.info.name}")
                ids.append(tid)
                upstream = (tid, "model")
            checks: dict[str, CheckPlan] = {}
            for use in recipe.checks[tname]:
                ref = None
                if use.info.cls.reference is not None:
                    ref = _add_task(dag, at, use, (src_model.id, SOURCE_OUTPUT),
                                    f"check:{use.info.name}:reference", use.info.cls.reference)
                cid = _add_task(dag, at, use, upstream, f"check:{use.info.name}", reference_task=ref)
                checks[use.info.name] = CheckPlan(cid, ref, use)
            _cheap_first(dag, checks)
            plans.append(TargetPlan(recipe, tname, ids, checks))
    if len(recipes) > 1:
        for node in dag.nodes:
            obj = dag.nodes[node]["obj"]
            if isinstance(obj, Task):
                obj.qualified = True
    return BuildGraph(dag, plans, recipes)
