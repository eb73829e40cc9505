"""Compile recipes into one networkx DAG of tasks. Identical tasks (same step, params, inputs and
hardware properties) are one node, however many targets or recipes use them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from orchestrator import formats
from orchestrator.hashing import sha256_json
from orchestrator.recipe import Recipe, StepUse, TaskLimits
from orchestrator.registry import StepInfo
from orchestrator.step import Resources

SOURCE_OUTPUT = "model"


@dataclass(frozen=True)
class Source:
    """A graph input that is not built: the model source or the samples file of a recipe."""

    id: str
    recipe: str
    what: str  # "model" | "samples"


@dataclass
class Task:
    id: str
    info: StepInfo
    params: dict[str, Any]  # validated, completed, JSON mode; gate fields removed: what is keyed and run
    inputs: dict[str, tuple[str, str]]  # input name -> (node id, output name)
    hardware: dict[str, Any]
    device: str
    model: dict[str, Any]
    input_formats: dict[str, str] = field(default_factory=dict)  # input -> format it arrives in
    labels: list[tuple[str, str, str]] = field(default_factory=list)  # (recipe, target, position)
    reference: bool = False
    tokenizes: bool = False  # reads the sample texts and tokenizes them (keys the tokenizers)
    qualified: bool = False  # several recipes in one build: labels name the recipe too
    resources: Resources = field(default_factory=Resources)
    limits: TaskLimits | None = None  # per-step limits; never keyed (they change no output)
    exclusive: bool = False  # the step measures speed: the task runs alone (Step.exclusive)

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
    name: str
    steps: list[str]  # task ids, in order
    checks: dict[str, CheckPlan]

    def task_ids(self) -> list[str]:
        return self.steps + [i for c in self.checks.values() for i in c.ids()]


@dataclass
class BuildGraph:
    dag: Any  # nx.DiGraph; node attribute "obj" holds a Task or a Source
    targets: list[TargetPlan]
    recipes: list[Recipe]

    def task(self, node: str) -> Task:
        obj = self.dag.nodes[node]["obj"]
        assert isinstance(obj, Task)
        return obj

    def tasks(self) -> list[Task]:
        """Tasks in a stable topological order."""
        order = nx.lexicographical_topological_sort(
            self.dag, key=lambda n: self.dag.nodes[n].get("seq", 0))
        return [o for n in order if isinstance(o := self.dag.nodes[n]["obj"], Task)]


@dataclass(frozen=True)
class _Where:
    """What every task of one target shares while it is being compiled."""

    recipe: str
    target: str
    hardware: dict[str, Any]
    model: dict[str, Any]
    src_model: str
    src_samples: str | None


def _add_task(dag: Any, at: _Where, use: StepUse, upstream: tuple[str, str], position: str,
              overrides: dict[str, Any] | None = None, reference_task: str | None = None) -> str:
    """Add (or reuse) the task for one use of a step; identical tasks are one node."""
    cls = use.info.cls
    params = use.params.model_copy(update=overrides) if overrides else use.params
    params = cls.complete_params(params, at.model)
    pjson = params.model_dump(mode="json", exclude=set(cls.gate_fields))
    inputs: dict[str, tuple[str, str]] = {}
    for name in cls.inputs_for(params):
        if name == "model":
            inputs[name] = upstream
        elif name == "source":
            inputs[name] = (at.src_model, SOURCE_OUTPUT)
        elif name == "samples" and at.src_samples is not None:
            inputs[name] = (at.src_samples, SOURCE_OUTPUT)
        elif name == "reference" and reference_task is not None:
            inputs[name] = (reference_task, "reference")
    hw_used = {k: at.hardware.get(k) for k in cls.hardware_keys}
    model = {k: v for k, v in at.model.items() if k != "shapes"}  # shapes only via complete_params
    identity = {
        "step": use.info.name, "plugin": use.info.dist, "params": pjson,
        "inputs": {k: list(v) for k, v in inputs.items()}, "hw": hw_used,
        "model": model,
    }
    tid = "t:" + sha256_json(identity)[:20]
    if tid not in dag:
        files = {}
        for name, (node, out) in inputs.items():
            up = dag.nodes[node]["obj"]
            files[name] = (up.info.cls.output_formats.get(out, formats.ANY) if isinstance(up, Task)
                           else formats.HF_MODEL if up.what == "model" else formats.TEXT)
        task = Task(tid, use.info, pjson, inputs, hw_used, at.hardware["device"], model,
                    files, reference=overrides is not None,
                    tokenizes="samples" in cls.inputs_for(params)
                    and (cls.kind == "transform" or overrides is not None),
                    resources=cls.resources_for(at.hardware), exclusive=bool(cls.exclusive))
        dag.add_node(tid, obj=task, seq=dag.number_of_nodes())
        for up, _ in inputs.values():
            dag.add_edge(up, tid)
    task = dag.nodes[tid]["obj"]
    task.labels.append((at.recipe, at.target, position))
    task.limits = use.limits if task.limits is None else task.limits.loosest(use.limits)
    return tid


def compile_graph(recipes: list[Recipe], only_targets: list[str] | None = None) -> BuildGraph:
    dag = nx.DiGraph()
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
        for tname, target in recipe.model.targets.items():
            if only_targets and tname not in only_targets:
                continue
            at = _Where(recipe.name, tname, target.hardware.model_dump(), model_info, src_model.id,
                        src_samples.id if src_samples else None)
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
            plans.append(TargetPlan(recipe, tname, ids, checks))
    if len(recipes) > 1:
        for node in dag.nodes:
            obj = dag.nodes[node]["obj"]
            if isinstance(obj, Task):
                obj.qualified = True
    return BuildGraph(dag, plans, recipes)
