"""Planning: for every task, HIT, RUN (with reasons) or SKIP (with why). Never runs a step.

The plan is a pure function of the graph, the source digests and what the store holds. A task
downstream of a RUN task has no key yet (its inputs are not built); the executor computes it once
the inputs exist, so an upstream that rebuilds to identical bytes makes it a hit (early cutoff).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from orchestrator.graph import BuildGraph, Source, Task
from orchestrator.keys import (
    TOKENIZERS,
    diff_documents,
    key_document,
    machine_fact,
    task_key,
    toolchain,
)
from orchestrator.sources import ResolvedSource, StatCache, resolve_model_path
from orchestrator.store.base import Blob

Status = Literal["HIT", "RUN", "SKIP"]


@dataclass
class Decision:
    status: Status
    reasons: list[str] = field(default_factory=list)
    key: str | None = None
    doc: dict[str, Any] | None = None
    entry: dict[str, Any] | None = None


@dataclass
class Plan:
    graph: BuildGraph
    sources: dict[str, ResolvedSource]
    decisions: dict[str, Decision]
    force: bool = False
    rebench: bool = False

    def forced(self, task: Task) -> bool:
        return self.force or (self.rebench and task.step == "benchmark")

    def counts(self) -> dict[str, int]:
        out = {"HIT": 0, "RUN": 0, "SKIP": 0}
        for d in self.decisions.values():
            out[d.status] += 1
        return out


def resolve_sources(graph: BuildGraph, stats: StatCache) -> dict[str, ResolvedSource]:
    out: dict[str, ResolvedSource] = {}
    by_name = {r.name: r for r in graph.recipes}
    for node, data in graph.dag.nodes(data=True):
        src = data["obj"]
        if not isinstance(src, Source) or not any(True for _ in graph.dag.successors(node)):
            continue
        recipe = by_name[src.recipe]
        if src.what == "model":
            m = recipe.model.model
            path = resolve_model_path(m.source, recipe.base_dir, m.revision,
                                      recipe.where("model", "source"))
        else:
            samples = recipe.model.inputs.samples
            assert samples is not None
            path = recipe.resolve(samples)
            check_samples(path, recipe.where("inputs", "samples"))
        out[node] = ResolvedSource(path, stats.blob(path))
    return out


def check_samples(path: Path, where: str) -> None:
    """A samples file must be UTF-8 text with at least one non-empty line."""
    from orchestrator.errors import FatalError

    try:
        text = path.read_bytes().decode()
    except FileNotFoundError:
        raise FatalError(f"samples file {path} (inputs.samples at {where}) not found; fix the path "
                         "(relative to the recipe)") from None
    except IsADirectoryError:
        raise FatalError(f"samples {path} (inputs.samples at {where}) is a folder; give a text "
                         "file with one sample per line") from None
    except UnicodeDecodeError as e:
        raise FatalError(f"samples file {path} (inputs.samples at {where}) is not UTF-8 text "
                         f"(byte {e.start}); save it as UTF-8") from None
    if not any(line.strip() for line in text.splitlines()):
        raise FatalError(f"samples file {path} (inputs.samples at {where}) is empty; give one "
                         "sample text per line")


def task_toolchain(task: Task) -> tuple[str, ...]:
    """The step's toolchain for this task, plus the tokenizer libraries for a task that tokenizes
    the samples (a transform that calibrates on them, or a check's reference task)."""
    names = task.info.cls.toolchain_for(task.input_formats, task.reference)
    return tuple(sorted(set(names) | set(TOKENIZERS))) if task.tokenizes else names


def document(task: Task, input_digests: dict[str, str]) -> dict[str, Any]:
    info = task.info
    doc = key_document(
        step=info.name,
        version=info.cls.version,
        plugin={"dist": info.dist, "version": info.dist_version},
        code=info.code,
        params=task.params,
        inputs=input_digests,
        toolchain=toolchain(task_toolchain(task)),
        hardware=task.hardware,
        model=task.model,
    )
    if task.reference:
        doc["role"] = "reference"
    if info.cls.machine_keys:  # measurements: a cache shared across machines must not mix them
        doc["machine"] = {k: machine_fact(k) for k in info.cls.machine_keys}
    return doc


def last_key(task: Task) -> str:
    recipe, target, pos = task.labels[0]
    return f"last:{recipe}/{target}/{pos}"


def usable_entry(store: Any, key: str) -> tuple[dict[str, Any] | None, str | None]:
    """The action entry for key if every blob it names is intact; else (None, why not)."""
    entry = store.get_action(key)
    if entry is None:
        return None, None
    for name, b in sorted(entry["outputs"].items()):
        problem = store.check(Blob.from_json(b))
        if problem:
            return None, f"cache entry invalid: output {name!r} {problem}"
    return entry, None


def input_digests(task: Task, sources: dict[str, ResolvedSource],
                  outputs: dict[str, dict[str, Any]]) -> dict[str, str] | None:
    """Digests of a task's inputs, or None while an upstream output is not known yet."""
    digests: dict[str, str] = {}
    for name, (node, out) in task.inputs.items():
        if node in sources:
            digests[name] = sources[node].blob.digest
        elif node in outputs:
            digests[name] = outputs[node][out]["digest"]
        else:
            return None
    return digests


def decide(task: Task, store: Any, digests: dict[str, str], forced: bool) -> Decision:
    doc = document(task, digests)
    key = task_key(doc)
    if forced:
        return Decision("RUN", ["forced"], key, doc)
    entry, problem = usable_entry(store, key)
    if entry is not None:
        return Decision("HIT", [], key, doc, entry)
    if problem:
        return Decision("RUN", [problem], key, doc)
    last = store.get_meta(last_key(task))
    if last is None:
        return Decision("RUN", ["new"], key, doc)
    if last == doc:
        return Decision("RUN", ["not in this cache"], key, doc)
    return Decision("RUN", diff_documents(last, doc), key, doc)


def pending_reasons(task: Task, graph: BuildGraph, decisions: dict[str, Decision], store: Any,
                    forced: bool, sources: dict[str, ResolvedSource]) -> list[str]:
    """Why a task whose inputs are not built yet runs: what changed in the task itself (compared
    without inputs), then the upstream that runs first."""
    running = [graph.task(u).label for u in graph.dag.predecessors(task.id)
               if u in decisions and decisions[u].status == "RUN"]
    upstream = (f"input changes: upstream {', '.join(running)} runs first "
                "(a hit after all if it rebuilds identical bytes)")
    if forced:
        return ["forced", upstream]
    last = store.get_meta(last_key(task))
    if last is None:
        return ["new"]
    own = [r for r in diff_documents({**last, "inputs": {}}, {**document(task, {}), "inputs": {}})
           if r != "key changed"]
    known = {name: sources[node].blob.digest for name, (node, _) in task.inputs.items()
             if node in sources}  # the source and samples are hashed already
    own += [f"input changed: {name}" for name, digest in sorted(known.items())
            if last.get("inputs", {}).get(name) != digest]
    return own + [upstream]


def make_plan(graph: BuildGraph, store: Any, sources: dict[str, ResolvedSource],
              force: bool = False, rebench: bool = False, cuda_devices: int = 0) -> Plan:
    decisions: dict[str, Decision] = {}
    outputs: dict[str, dict[str, Any]] = {}
    for task in graph.tasks():
        ups = [u for u in graph.dag.predecessors(task.id) if u in decisions]
        skipped = [u for u in ups if decisions[u].status == "SKIP"]
        if skipped:
            decisions[task.id] = Decision("SKIP", [f"upstream {graph.task(skipped[0]).label} is skipped"])
            continue
        need = task.resources.cuda
        if need > cuda_devices:
            decisions[task.id] = Decision("SKIP", [
                f"needs {need} CUDA device(s); this executor has {cuda_devices}"])
            continue
        forced = force or (rebench and task.step == "benchmark")
        digests = input_digests(task, sources, outputs)
        if digests is None:
            decisions[task.id] = Decision("RUN", pending_reasons(task, graph, decisions, store, forced,
                                                                 sources))
            continue
        d = decide(task, store, digests, forced)
        decisions[task.id] = d
        if d.status == "HIT" and d.entry is not None:
            outputs[task.id] = d.entry["outputs"]
    return Plan(graph, sources, decisions, force, rebench)


def source_path(plan: Plan, node: str) -> Path:
    return plan.sources[node].path
