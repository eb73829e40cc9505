"""Planning: for every task, HIT, RUN (with reasons) or SKIP (with why). Never runs a step.

The decisions depend only on the graph, the source digests and what the store holds, but reading
the store is not free of effects: checking an entry's blobs removes a corrupt one (the store never
serves it; the entry is then a miss). A task downstream of a RUN task has no key yet (its inputs
are not built); the scheduler computes it once the inputs exist (``decide(after_upstream=True)``),
so an upstream that rebuilds to identical bytes makes it a hit (early cutoff).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from orchestrator.host.machine import fact as machine_fact
from orchestrator.host.versions import TOKENIZERS
from orchestrator.plan.graph import BuildGraph, Source, Task
from orchestrator.plan.keys import (
    diff_documents,
    key_document,
    task_key,
    toolchain,
)
from orchestrator.plan.sources import ResolvedSource, StatCache, resolve_model_path
from orchestrator.store import index as index_keys
from orchestrator.store.base import ActionEntry, Blob, InvalidEntry, entry_problem

Status = Literal["HIT", "RUN", "SKIP"]


@dataclass
class Decision:
    status: Status
    reasons: list[str] = field(default_factory=list)
    key: str | None = None
    doc: dict[str, Any] | None = None
    entry: ActionEntry | None = None


@dataclass
class Plan:
    """Each task's decision, with everything the plan was made from, so that planning again
    (after a remote blob was lost) is one call that cannot forget an argument (`replan`)."""

    graph: BuildGraph
    sources: dict[str, ResolvedSource]
    decisions: dict[str, Decision]
    force: bool = False
    rebench: bool = False
    cuda_devices: int = 0
    skips: dict[str, str] = field(default_factory=dict)  # task id -> why this machine cannot

    def replan(self, store: Any) -> Plan:
        """The plan made again against the store as it is now, from the same inputs."""
        return make_plan(self.graph, store, self.sources, force=self.force, rebench=self.rebench,
                         cuda_devices=self.cuda_devices, skips=self.skips)

    def forced(self, task: Task) -> bool:
        return self.force or (self.rebench and task.info.cls.measures_speed)

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
            where = recipe.where("model", "source")
            path = resolve_model_path(m.source, recipe.base_dir, m.revision, where)
            what = f"model (model.source at {where})"
        else:  # a text file of the recipe's inputs: samples, labelled
            text = getattr(recipe.model.inputs, src.what)
            assert text is not None
            path = recipe.resolve(text)
            where = recipe.where("inputs", src.what)
            check_samples(path, where, src.what)
            what = f"{src.what} (inputs.{src.what} at {where})"
        out[node] = ResolvedSource(path, stats.blob(path, what))
    return out


MAX_SAMPLES_BYTES = 64 * 2**20  # parity and calibration use a few hundred lines


def check_samples(path: Path, where: str, field: str = "samples") -> None:
    """A samples file must be a regular UTF-8 text file of at most MAX_SAMPLES_BYTES with at least
    one non-empty line. It is read in chunks: never whole into memory, never blocking (a FIFO or
    device is refused before it is read)."""
    import codecs

    from orchestrator.errors import FatalError
    from orchestrator.hashing import NotRegularFile, open_regular

    what = f"{field} file {path} (inputs.{field} at {where})"
    try:
        f = open_regular(path)
    except FileNotFoundError:
        if path.is_symlink():
            raise FatalError(f"{what} is a dangling symbolic link; fix the link or the path") from None
        raise FatalError(f"{what} not found; fix the path (relative to the recipe)") from None
    except NotRegularFile as e:
        if path.is_dir():
            raise FatalError(f"{field} {path} (inputs.{field} at {where}) is a folder; give a text "
                             "file with one sample per line") from None
        raise FatalError(f"{what} {e.strerror}; give a regular text file with one sample per "
                         "line") from None
    except PermissionError as e:
        raise FatalError(f"{what} cannot be read: {e.strerror}") from None
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, nonempty = 0, False
    with f:
        while True:
            chunk = f.read(1 << 20)
            if offset + len(chunk) > MAX_SAMPLES_BYTES:
                raise FatalError(f"{what} is larger than {MAX_SAMPLES_BYTES // 2**20} MiB; parity "
                                 "and calibration need a few hundred lines: give a smaller file")
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                raise FatalError(f"{what} is not UTF-8 text (byte {offset - pending + e.start}); "
                                 "save it as UTF-8") from None
            nonempty = nonempty or bool(text.strip())
            offset += len(chunk)
            if not chunk:
                break
    if not nonempty:
        raise FatalError(f"{what} is empty; give one sample text per line")


def task_toolchain(task: Task) -> tuple[str, ...]:
    """The step's toolchain for this task, plus the tokenizer libraries for a task that tokenizes
    the samples (a transform that calibrates on them, or a check's reference task)."""
    names = task.toolchain
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
    return index_keys.last_document(recipe, target, pos)


def prefetch_remote(store: Any, graph: BuildGraph, sources: dict[str, ResolvedSource]) -> None:
    """Before planning against a remote cache: read, level by level of the DAG, every entry
    planning will ask for in one batched request per level, and check the existence of every
    blob they name in one listing per shard (nothing for a local-only store)."""
    if not hasattr(store, "batch_entries") or not store.begin_prefetch():
        return
    from orchestrator.plan.keys import task_key
    outputs: dict[str, dict[str, Any]] = {}
    pending = list(graph.tasks())
    blobs: list[Blob] = []
    while pending:
        level = {t.id: task_key(document(t, d)) for t in pending
                 if (d := input_digests(t, sources, outputs)) is not None}
        if not level:
            break
        pending = [t for t in pending if t.id not in level]
        for tid, entry in store.batch_entries(level).items():
            if isinstance(entry.get("outputs"), dict):
                outputs[tid] = entry["outputs"]
                blobs += [Blob.from_json(b) for b in entry["outputs"].values()
                          if isinstance(b, dict)]
    store.prefetch_blobs(blobs)


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    try:
        return diff_documents(old, new)
    except (TypeError, AttributeError, ValueError):  # a last document of another shape
        return ["key changed"]


def _last_doc(store: Any, task: Task) -> dict[str, Any] | None:
    """The key document this task position used last time (None if unknown or not a document)."""
    last = store.get_meta(last_key(task))
    return last if isinstance(last, dict) else None


def usable_entry(store: Any, key: str) -> tuple[ActionEntry | None, str | None]:
    """The action entry for key if it is well formed and every blob it names is intact; else
    (None, why not)."""
    try:
        entry = store.get_action(key)
    except InvalidEntry as e:
        return None, f"cache entry invalid: {e}"
    if entry is None:
        return None, None
    problem = entry_problem(entry)
    if problem:
        return None, f"cache entry invalid: {problem}"
    for name, b in sorted(entry["outputs"].items()):
        problem = store.check(Blob.from_json(b))
        if problem:
            return None, f"cache entry invalid: output {name!r} {problem}"
    return ActionEntry.from_json(entry), None


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


def decide(task: Task, store: Any, digests: dict[str, str], forced: bool,
           after_upstream: bool = False) -> Decision:
    """HIT or RUN (with reasons) for a task whose input digests are known. ``after_upstream``:
    decided again once an upstream rebuilt (then a key seen before but gone from the cache
    still runs because its input changed)."""
    doc = document(task, digests)
    key = task_key(doc)
    if forced:
        return Decision("RUN", ["forced"], key, doc)
    entry, problem = usable_entry(store, key)
    if entry is not None:
        return Decision("HIT", [], key, doc, entry)
    if problem:
        return Decision("RUN", [problem], key, doc)
    last = _last_doc(store, task)
    if last is None:
        return Decision("RUN", ["new"], key, doc)
    if last == doc:
        return Decision("RUN", ["input changed" if after_upstream else "not in this cache"],
                        key, doc)
    return Decision("RUN", _diff(last, doc), key, doc)


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
    last = _last_doc(store, task)
    if last is None:
        return ["new"]
    own = [r for r in _diff({**last, "inputs": {}}, {**document(task, {}), "inputs": {}})
           if r != "key changed"]
    known = {name: sources[node].blob.digest for name, (node, _) in task.inputs.items()
             if node in sources}  # the source and samples are hashed already
    last_inputs = last.get("inputs")
    last_inputs = last_inputs if isinstance(last_inputs, dict) else {}
    own += [f"input changed: {name}" for name, digest in sorted(known.items())
            if last_inputs.get(name) != digest]
    return own + [upstream]


def make_plan(graph: BuildGraph, store: Any, sources: dict[str, ResolvedSource],
              force: bool = False, rebench: bool = False, cuda_devices: int = 0,
              skips: dict[str, str] | None = None) -> Plan:
    """``skips``: task id -> why this machine cannot run it (orchestrator.plan.fit)."""
    decisions: dict[str, Decision] = {}
    skips = skips or {}
    outputs: dict[str, dict[str, Any]] = {}
    for task in graph.tasks():
        ups = [u for u in graph.dag.predecessors(task.id) if u in decisions]
        skipped = [u for u in ups if decisions[u].status == "SKIP"]
        if skipped:
            decisions[task.id] = Decision("SKIP", [f"upstream {graph.task(skipped[0]).label} is skipped"])
            continue
        if task.id in skips:
            decisions[task.id] = Decision("SKIP", [skips[task.id]])
            continue
        need = task.resources.cuda
        if need > cuda_devices:
            decisions[task.id] = Decision("SKIP", [
                f"needs {need} CUDA device(s); this executor has {cuda_devices}"])
            continue
        forced = force or (rebench and task.info.cls.measures_speed)
        digests = input_digests(task, sources, outputs)
        if digests is None:
            decisions[task.id] = Decision("RUN", pending_reasons(task, graph, decisions, store, forced,
                                                                 sources))
            continue
        d = decide(task, store, digests, forced)
        decisions[task.id] = d
        if d.status == "HIT" and d.entry is not None:
            outputs[task.id] = d.entry.outputs
    return Plan(graph, sources, decisions, force, rebench, cuda_devices, dict(skips))

