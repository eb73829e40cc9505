"""Recipe: the YAML a user writes, validated into frozen pydantic values.

Every error names file:line:col, what is wrong and what to do; a misspelt key or step name gets the
closest valid one. Step params are validated against the step's own ``Params`` model.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, PositiveInt, ValidationError, field_validator, model_validator

from orchestrator.errors import FatalError
from orchestrator.hashing import canonical_json, sha256_bytes
from orchestrator.host.conditions import OnMachine
from orchestrator.recipe import yamlpos
from orchestrator.registry import Registry, StepInfo, plugin_hint
from orchestrator.step import Hardware, _Strict

# recipe and target names become folder names under build/: checked whole (re.fullmatch: a `$`
# would match before a trailing newline) and short enough for any file system
ALLOW_PLUGINS_ENV = "DEPLOY_BUILD_ALLOW_PLUGINS"  # os.pathsep-separated plugin files or folders
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
MAX_NAME = 100
CANDIDATE_SEP = "~"  # "<search target>~<variant>~N": never a valid target name, so no clash
MAX_EXHAUSTIVE = 64  # variants an exhaustive search may expand to


class ModelSource(_Strict):
    source: str = Field(
        description="A local Hugging Face folder (relative to the recipe), "
        "'package:<distribution>' for an installed package that ships a model, "
        "or a hub id 'org/name' (needs the hub)."
    )
    revision: str | None = Field(None, description="Pinned hub revision (hub ids only).")
    task: Literal[
        "feature-extraction", "sequence-classification", "token-classification", "fill-mask"
    ] = "feature-extraction"
    trust_remote_code: bool = False


class Shapes(_Strict):
    batch: list[PositiveInt] = Field(default_factory=lambda: [1], min_length=1,
                                     description="Batch sizes (the default benchmark grid).")
    sequence: list[PositiveInt] = Field(default_factory=lambda: [128], min_length=1,
                                        description="Sequence lengths (the default benchmark grid).")


class Inputs(_Strict):
    shapes: Shapes = Field(default_factory=Shapes)
    samples: str | None = Field(
        None, description="Text file, one sample per line (parity and calibration)."
    )
    labelled: str | None = Field(
        None, description="Labelled text file, one 'label<TAB>text' per line (the accuracy "
        "check of a sequence classifier; label: a class index or a name of config.id2label)."
    )


class Limits(_Strict):
    """Per-step limits: a task past either is killed (its whole process group) and fails alone.
    They do not change what a step makes, so they never enter a key."""

    timeout_s: float | None = Field(None, gt=0, allow_inf_nan=False,
                                    description="Wall-clock seconds one task may run.")
    max_memory_mb: float | None = Field(None, gt=0, allow_inf_nan=False,
                                        description="Resident memory (MB, of the worker and its "
                                        "child processes) one task may use.")

    @field_validator("timeout_s", "max_memory_mb", mode="before")
    @classmethod
    def _no_bools(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"give a number, not {str(value).lower()}")
        return value


LIMIT_FIELDS = ("timeout_s", "max_memory_mb")


class CacheSettings(_Strict):
    """A shared remote cache for this recipe (--remote-cache and $DEPLOY_BUILD_REMOTE_CACHE win)."""

    remote: str | None = Field(None, description="fsspec URL of a shared cache: s3://bucket/prefix, "
                               "file:///shared/folder.")
    mode: Literal["read", "write", "readwrite"] = Field(
        "readwrite", description="read: use it, never write it (laptops); write: fill it, never "
        "read it; readwrite: both (CI).")


@dataclass(frozen=True)
class Limit:
    value: float
    where: str  # where it was set: "set at r.yaml:8:9" or "the default of step 'x'"


@dataclass(frozen=True)
class TaskLimits:
    """The limits of one task, each with where it was set (None: no limit)."""

    timeout_s: Limit | None = None
    max_memory_mb: Limit | None = None

    def loosest(self, other: TaskLimits) -> TaskLimits:
        """For one task shared by several step uses: it runs once, so each limit is the loosest
        of theirs (no limit wins)."""
        def pick(a: Limit | None, b: Limit | None) -> Limit | None:
            return None if a is None or b is None else (a if a.value >= b.value else b)

        return TaskLimits(pick(self.timeout_s, other.timeout_s),
                          pick(self.max_memory_mb, other.max_memory_mb))


StepList = list[dict[str, dict[str, Any] | None]]


class Variant(_Strict):
    """One alternative of a search: a whole step chain, and optionally params to vary in it."""

    steps: StepList = Field(min_length=1, description="The chain, as a target's 'steps:'.")
    space: dict[str, list[Any]] = Field(
        default_factory=dict, description="Params to vary: '<position>.<param>' (the 1-based "
        "position of a step in this chain) -> the values to try; every combination is one "
        "variant.")


class Pin(_Strict):
    """A choice made by hand for some machines: this variant wins where ``when`` holds."""

    variant: str = Field(description="A variant name (or 'name~N' for one point of its space).")
    when: OnMachine | None = Field(None, description="The machines it is for (default: all).")


class Search(_Strict):
    """Choose the engine for the machine: the variants are built and checked like targets (one
    DAG: shared steps run once, each variant cached under its own keys), cheap gates prune,
    the survivors are timed together, the winner becomes the target (docs/search.md)."""

    variants: dict[str, Variant] = Field(min_length=1)
    objective: Literal["latency", "throughput", "size"] = Field(
        "latency", description="latency and throughput: the benchmark's paired speed-up at "
        "'at'; size: the engine's bytes.")
    at: str | None = Field(None, description="The benchmark grid point the objective reads "
                           "(e.g. b1_s128; default: the first one).")
    strategy: Literal["exhaustive", "random"] = Field(
        "exhaustive", description="exhaustive: every variant (at most 64); random: "
        "max_variants of them, drawn with seed (reproducible).")
    max_variants: PositiveInt | None = Field(None, description="random: how many to draw.")
    seed: int = Field(0, description="random: the seed of the draw.")
    budget_s: float | None = Field(None, gt=0, description="Stop timing further variants once "
                                   "the search's benchmarks ran this long (the rest: 'not "
                                   "measured: budget').")
    pin: list[Pin] = Field(default_factory=list, description="Choices made by hand per machine "
                           "class; the first whose 'when' holds wins if it passes the gates.")


class Target(_Strict):
    hardware: Hardware = Field(default_factory=Hardware)
    steps: StepList | None = Field(
        None, min_length=1, description="Each item: 'step-name: {params}', and optionally "
        "'limits: {timeout_s, max_memory_mb}' beside it.")
    search: Search | None = Field(None, description="Instead of steps: alternatives to choose "
                                  "from on the machine that builds it.")
    checks: dict[str, dict[str, Any] | None] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _steps_or_search(self) -> Target:
        if (self.steps is None) == (self.search is None):
            raise ValueError("a target has either 'steps:' or 'search:' (one of them)")
        return self


class RecipeModel(_Strict):
    name: str | None = Field(None, json_schema_extra={"pattern": f"^{NAME_PATTERN}$",
                                                      "maxLength": MAX_NAME})
    plugins: list[str] = Field(default_factory=list)
    model: ModelSource
    inputs: Inputs = Field(default_factory=Inputs)
    limits: Limits = Field(default_factory=Limits,
                           description="Defaults for every step and check of the recipe (a step's "
                           "own 'limits:' wins).")
    targets: dict[str, Target] = Field(min_length=1)
    cache: CacheSettings = Field(default_factory=CacheSettings,
                                 description="A shared remote cache (out of every key).")
    manifests: str | None = Field(None, description="A folder (relative to the recipe) to write "
                                  "committed manifests to, as --manifests DIR does (which wins).")


@dataclass(frozen=True)
class StepUse:
    """One step (or check) of a target, with validated params and where it was written."""

    info: StepInfo
    params: BaseModel
    where: str
    limits: TaskLimits = TaskLimits()


@dataclass(frozen=True)
class Candidate:
    """One variant of a search, built and checked like a target of its own (never written to
    build/): its variant, and the params its space set (``"3:ort-quantize.per_channel"``)."""

    name: str  # the concrete target name: "<search target>~<variant>[~N]"
    search: str  # the search target it is a candidate of
    variant: str
    params: dict[str, Any]


@dataclass(frozen=True)
class SearchPlan:
    target: str
    spec: Search
    candidates: dict[str, Candidate]  # concrete target name -> the candidate
    left_out: int = 0  # variants the random strategy did not draw


@dataclass(frozen=True)
class Recipe:
    path: Path
    name: str
    digest: str
    model: RecipeModel
    steps: dict[str, tuple[StepUse, ...]]  # concrete target (a target, or a search candidate)
    checks: dict[str, tuple[StepUse, ...]]
    registry: Registry
    positions: yamlpos.Positions
    searches: dict[str, SearchPlan] = dataclasses.field(default_factory=dict)

    def hardware_of(self, target: str) -> Hardware:
        """The hardware of a concrete target (a search candidate: its search target's)."""
        return self.model.targets[self.search_target(target)].hardware

    def search_target(self, target: str) -> str:
        """The recipe target a concrete target belongs to (itself, unless a candidate)."""
        return target.split(CANDIDATE_SEP, 1)[0]

    def candidate(self, target: str) -> Candidate | None:
        plan = self.searches.get(self.search_target(target))
        return plan.candidates.get(target) if plan is not None else None

    def where(self, *path: str | int) -> str:
        """file:line:col of a value of the recipe, e.g. where("inputs", "samples")."""
        return str(self.positions.at(path))

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, relpath: str) -> Path:
        return (self.base_dir / relpath).resolve()


def plugin_project(recipe: Path) -> Path:
    """The project a recipe's plugins must stay in: the nearest folder, from the recipe's own
    upwards, that holds a pyproject.toml or .git; the recipe's folder where none does."""
    start = recipe.parent.resolve()
    for d in (start, *start.parents):
        if (d / "pyproject.toml").exists() or (d / ".git").exists():
            return d
    return start


def allowed_plugin_paths(extra: Sequence[str | Path] = ()) -> list[Path]:
    """Plugin files or folders allowed outside a recipe's project: --allow-plugin-path and
    $DEPLOY_BUILD_ALLOW_PLUGINS."""
    env = [p for p in os.environ.get(ALLOW_PLUGINS_ENV, "").split(os.pathsep) if p]
    return [Path(p).expanduser().resolve() for p in (*extra, *env)]


def _check_plugin_trusted(given: str, file: Path, where: str, project: Path,
                          allowed: list[Path]) -> None:
    if any(file == a or file.is_relative_to(a) for a in (project, *allowed)):
        return
    raise FatalError(
        f"plugin {given!r} at {where} is {file}, outside the recipe's project {project}; a plugin "
        f"is code that runs with your rights, so only plugins inside the project are imported: "
        f"if you trust it, pass --allow-plugin-path {file} (or add it to ${ALLOW_PLUGINS_ENV})")


def load_recipe(path: str | Path, registry: Registry | None = None,
                allow_plugins: Sequence[str | Path] = ()) -> Recipe:
    """Load and validate a recipe. Its plugins must resolve (symlinks followed) inside its
    project (plugin_project) or an allowed path; a plugin file is imported only when the recipe
    uses a step it declares."""
    path = Path(path)
    display = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FatalError(f"recipe {display} not found; check the path") from None
    except IsADirectoryError:
        raise FatalError(f"recipe {display} is a folder; give a .yaml file") from None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise FatalError(f"recipe {display} is not UTF-8 text") from None
    data, pos = yamlpos.load(text, display)
    if not isinstance(data, dict):
        raise FatalError(f"recipe at {pos.at(())} must be a mapping with 'model' and 'targets'")
    try:
        model = RecipeModel.model_validate(data)
    except ValidationError as e:
        raise FatalError(_format_errors(e, pos, RecipeModel, ())) from None
    for tname in model.targets:
        _check_name("target name", tname, pos.at(("targets", tname), key=True))
    if model.name is not None:
        _check_name("recipe name", model.name, pos.at(("name",)))
    registry = registry or Registry()
    project, allowed = plugin_project(path), allowed_plugin_paths(allow_plugins)
    for i, plugin in enumerate(model.plugins):
        where, file = str(pos.at(("plugins", i))), (path.parent / plugin).resolve()
        _check_plugin_trusted(plugin, file, where, project, allowed)
        registry.declare_file(file, where=where)
    steps: dict[str, tuple[StepUse, ...]] = {}
    checks: dict[str, tuple[StepUse, ...]] = {}
    searches: dict[str, SearchPlan] = {}
    for tname, target in model.targets.items():
        if target.search is None:
            steps[tname], checks[tname] = _target_uses(registry, tname, target, model.limits, pos)
            continue
        searches[tname] = _search_plan(tname, target.search, pos)
        for cname, cand in searches[tname].candidates.items():
            variant = target.search.variants[cand.variant]
            chain = _with_params(variant.steps, cand.params)
            at: tuple[str | int, ...] = ("targets", tname, "search", "variants", cand.variant)
            steps[cname], checks[cname] = _uses(registry, chain, target.checks, model.limits, pos,
                                                at, ("targets", tname))
    name = model.name or path.stem
    if model.name is None and _name_problem(name):
        raise FatalError(f"recipe name {name!r} (the file name of {display}) "
                         f"{_name_problem(name)}; set 'name:' in the recipe")
    m = model.model
    if m.revision is not None and (m.source.startswith("package:") or (path.parent / m.source).exists()):
        raise FatalError(f"model.revision at {pos.at(('model', 'revision'))} only applies to hub ids; "
                         "remove it (a local or package source is pinned by its content digest)")
    return Recipe(path, name, sha256_bytes(raw), model, steps, checks, registry, pos, searches)


def check_chain(steps: tuple[StepUse, ...], checks: tuple[StepUse, ...], registry: Registry) -> None:
    """Each step must accept the format the step before it gives (the first one: the model
    source, a Hugging Face folder), and each check the format of the last step's output."""
    from orchestrator import formats

    given, prev = formats.HF_MODEL, None
    for use in (*steps, *checks):
        cls = use.info.cls
        if "model" in cls.inputs:
            accepted = cls.input_formats.get("model", (formats.ANY,))
            if not formats.accepts(accepted, given):
                noun = "check" if cls.kind == "check" else "step"
                takes = " or ".join(accepted)
                if prev is None:
                    came = f"the first step of a target gets the model source ({given})"
                else:
                    came = f"{prev.info.name!r} before it (at {prev.where}) gives {given}"
                fix = _converters(registry, given, accepted)
                hint = (f"put {fix} {'before it' if prev is None else 'between them'}" if fix
                        else "change the order of the steps or the step")
                raise FatalError(f"{noun} {use.info.name!r} at {use.where} takes {takes}, but "
                                 f"{came}; {hint}")
        if cls.kind == "transform":
            given, prev = cls.output_formats.get("model", formats.ANY), use


def _converters(registry: Registry, given: str, accepted: tuple[str, ...]) -> str:
    """Steps that turn ``given`` into one of ``accepted`` (for the hint of a chain error)."""
    from orchestrator import formats

    found = []
    for name in registry.names("transform"):
        cls = registry.get(name).cls
        out = cls.output_formats.get("model", "")
        if formats.accepts(cls.input_formats.get("model", ()), given) and out in accepted \
                and formats.ANY not in cls.input_formats.get("model", ()):
            found.append(repr(name))
    return " or ".join(found[:3])


def _name_problem(name: str) -> str | None:
    """Why name cannot be a recipe or target name (a folder under build/), or None."""
    import re

    if len(name) > MAX_NAME:
        return f"is {len(name)} characters long; at most {MAX_NAME} are allowed"
    if re.fullmatch(NAME_PATTERN, name) is None:
        return ("may only hold letters, digits, '.', '_' and '-'" if name[:1].isalnum() else
                "must start with a letter or digit and may only hold letters, digits, '.', "
                "'_' and '-'")
    return None


def _valid_name(name: str) -> bool:
    return _name_problem(name) is None


def _check_name(what: str, name: str, where: object) -> None:
    problem = _name_problem(name)
    if problem:
        shown = repr(name) if len(name) <= 40 else repr(name[:40] + "...")
        raise FatalError(f"{what} {shown} at {where} {problem}")


def _use(
    registry: Registry,
    name: str,
    params: dict[str, Any] | None,
    pos: yamlpos.Positions,
    at: tuple[str | int, ...],
    kind: str,
) -> StepUse:
    key_path = at + (name,)
    where = pos.at(key_path, key=True)
    noun = "step" if kind == "transform" else "check"
    names = registry.names()  # every kind: asking for one would import every plugin
    if name not in names:
        hint = plugin_hint(name, Path(pos.file)) or _did_you_mean(name, names) \
            or f"`deploy-build steps` lists the {noun}s"
        raise FatalError(f"unknown {noun} {name!r} at {where}; {hint}")
    info = registry.get(name)
    if info.kind != kind:
        other = "a check: list it under 'checks:'" if info.kind == "check" else \
            "a step: list it under 'steps:'"
        raise FatalError(f"unknown {noun} {name!r} at {where}; {name!r} is {other}")
    try:
        validated = info.cls.Params.model_validate(params or {})
        canonical_json(validated.model_dump(mode="json"))
    except ValueError as e:
        if not isinstance(e, ValidationError):
            raise FatalError(f"{noun} {name!r} at {where}: NaN and infinity are not allowed in "
                             "params; give finite numbers") from None
        raise FatalError(
            _format_errors(e, pos, info.cls.Params, key_path, context=f"{noun} {name!r}")
        ) from None
    return StepUse(info, validated, str(where))


def _search_plan(tname: str, spec: Search, pos: yamlpos.Positions) -> SearchPlan:
    """The candidates of a search: every variant, times every combination of its space (the
    random strategy draws ``max_variants`` of them with ``seed``)."""
    import itertools
    import random

    found: list[Candidate] = []
    for vname, variant in spec.variants.items():
        _check_name("variant name", vname, pos.at(("targets", tname, "search", "variants", vname),
                                                  key=True))
        keys = sorted(variant.space)
        for key in keys:
            _space_key(key, variant, pos.at(("targets", tname, "search", "variants", vname,
                                             "space", key), key=True))
        combos = list(itertools.product(*(variant.space[k] for k in keys))) or [()]
        for i, combo in enumerate(combos):
            cname = f"{tname}{CANDIDATE_SEP}{vname}" + (f"{CANDIDATE_SEP}{i + 1}" if keys else "")
            found.append(Candidate(cname, tname, vname, dict(zip(keys, combo, strict=True))))
    where = pos.at(("targets", tname, "search"))
    left_out = 0
    if spec.strategy == "random":
        n = spec.max_variants or len(found)
        left_out = max(0, len(found) - n)
        found = sorted(random.Random(spec.seed).sample(found, min(n, len(found))),
                       key=lambda c: c.name)
    elif len(found) > MAX_EXHAUSTIVE:
        raise FatalError(f"search at {where} expands to {len(found)} variants, more than the "
                         f"{MAX_EXHAUSTIVE} an exhaustive search builds; use strategy: random "
                         "with max_variants (and a seed), or a smaller space")
    for pin in spec.pin:
        names = {c.name.split(CANDIDATE_SEP, 1)[1] for c in found} | set(spec.variants)
        if pin.variant not in names:
            hint = _did_you_mean(pin.variant, names) or "variants: " + ", ".join(sorted(names))
            raise FatalError(f"search pin at {where} names {pin.variant!r}, which is no "
                             f"variant; {hint}")
    return SearchPlan(tname, spec, {c.name: c for c in found}, left_out)


def _space_key(key: str, variant: Variant, where: object) -> None:
    position, _, param = key.partition(".")
    if not position.isdigit() or not param or not 1 <= int(position) <= len(variant.steps):
        raise FatalError(f"space key {key!r} at {where} must be '<position>.<param>' with a "
                         f"position from 1 to {len(variant.steps)} (the step's place in this "
                         "variant's chain), e.g. '3.per_channel'")
    if not variant.space[key]:
        raise FatalError(f"space key {key!r} at {where} lists no values; give at least one")


def _with_params(steps: StepList, params: dict[str, Any]) -> StepList:
    """A variant's chain with the params its space set (``"3.per_channel": False``)."""
    out = [dict(e) for e in steps]
    for key, value in params.items():
        position, _, param = key.partition(".")
        entry = out[int(position) - 1]
        name = next(k for k in entry if k != "limits")
        entry[name] = {**(entry[name] or {}), param: value}
    return out


def _target_uses(registry: Registry, tname: str, target: Target, recipe: Limits,
                 pos: yamlpos.Positions) -> tuple[tuple[StepUse, ...], tuple[StepUse, ...]]:
    """A target's step uses (in order, each with its limits) and check uses (by name)."""
    assert target.steps is not None
    base: tuple[str | int, ...] = ("targets", tname)
    return _uses(registry, target.steps, target.checks, recipe, pos, base, base)


def _uses(registry: Registry, chain: StepList, checks_of: dict[str, dict[str, Any] | None],
          recipe: Limits, pos: yamlpos.Positions, base: tuple[str | int, ...],
          checks_base: tuple[str | int, ...]) -> tuple[tuple[StepUse, ...], tuple[StepUse, ...]]:
    """Step uses of a chain written at ``base`` and check uses written at ``checks_base``."""
    uses = []
    for i, entry in enumerate(chain):
        entry = dict(entry)
        own = entry.pop("limits", None) if len(entry) > 1 else None
        if len(entry) != 1:
            raise FatalError(
                f"step at {pos.at(base + ('steps', i))} must be one 'name: {{params}}' pair "
                f"(and optionally 'limits: {{...}}' beside it), got {len(entry)} keys"
            )
        ((sname, params),) = entry.items()
        use = _use(registry, sname, params, pos, base + ("steps", i), "transform")
        lim = _limits(use, own, recipe, pos, base + ("steps", i, "limits"))
        uses.append(dataclasses.replace(use, limits=lim))
    checks = tuple(_check_use(registry, cname, cparams, recipe, pos, checks_base)
                   for cname, cparams in sorted(checks_of.items()))
    check_chain(tuple(uses), checks, registry)
    return tuple(uses), checks


def _check_use(registry: Registry, name: str, params: dict[str, Any] | None, recipe: Limits,
               pos: yamlpos.Positions, base: tuple[str | int, ...]) -> StepUse:
    """A check use: its params, and its own 'limits:' among them (``parity: {limits: {...}}``)."""
    params = dict(params or {})
    own = params.pop("limits", None)
    use = _use(registry, name, params, pos, base + ("checks",), "check")
    lim = _limits(use, own, recipe, pos, base + ("checks", name, "limits"))
    return dataclasses.replace(use, limits=lim)


def _limits(use: StepUse, own: Any, recipe: Limits, pos: yamlpos.Positions,
            at: tuple[str | int, ...]) -> TaskLimits:
    """A task's limits: the step use's own 'limits:' > the recipe's 'limits:' > the step class's
    defaults (``timeout_s`` and ``max_memory_mb`` class attributes)."""
    step_own = Limits()
    noun = "check" if use.info.cls.kind == "check" else "step"
    if own is not None:
        try:
            step_own = Limits.model_validate(own)
        except ValidationError as e:
            raise FatalError(_format_errors(e, pos, Limits, at,
                                            context=f"limits of {noun} {use.info.name!r}")) from None
    cls = use.info.cls
    out: dict[str, Limit | None] = {}
    for name in LIMIT_FIELDS:
        if getattr(step_own, name) is not None:
            out[name] = Limit(getattr(step_own, name), f"set at {pos.at(at + (name,))}")
        elif getattr(recipe, name) is not None:
            out[name] = Limit(getattr(recipe, name), f"set at {pos.at(('limits', name))}")
        elif getattr(cls, name, None) is not None:
            out[name] = Limit(float(getattr(cls, name)), f"the default of {noun} {use.info.name!r}")
        else:
            out[name] = None
    return TaskLimits(out["timeout_s"], out["max_memory_mb"])


def _did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def _format_errors(
    err: ValidationError,
    pos: yamlpos.Positions,
    root: type[BaseModel],
    prefix: tuple[str | int, ...],
    context: str = "",
) -> str:
    lines = []
    suggested: set[tuple[str | int, ...]] = set()
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    for e in errors:
        loc = tuple(e["loc"])
        full = prefix + loc
        ctx = f" in {context}" if context else ""
        if e["type"] == "extra_forbidden":
            field = str(loc[-1])
            allowed = _fields_at(root, loc[:-1])
            hint = _did_you_mean(field, allowed) or (
                f"allowed: {', '.join(sorted(allowed))}" if allowed else "remove it"
            )
            if hint.startswith("did you mean"):
                suggested.add(loc[:-1] + (hint.split("'")[1],))
            if field in ("True", "False"):  # YAML 1.1 reads on/off/yes/no unquoted as booleans
                hint = ("YAML reads an unquoted on/off/yes/no key as true/false: quote it"
                        + (f", or use one of: {', '.join(sorted(allowed))}" if allowed else ""))
            lines.append(f"unknown key {field!r}{ctx} at {pos.at(full, key=True)}; {hint}")
        elif e["type"] == "missing":
            if loc in suggested:  # already explained as a misspelling of this key
                continue
            lines.append(
                f"missing key {str(loc[-1])!r}{ctx} at {pos.at(full[:-1])}; add it "
                "(see `deploy-build schema`)"
            )
        else:
            field = ".".join(str(p) for p in loc) or "value"
            lines.append(f"invalid {field}{ctx} at {pos.at(full)}: {e['msg']}")
    return "\n".join(lines)


def _fields_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The field names of the model reached by following loc through fields, dicts and lists."""
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if not isinstance(part, str) or part not in tp.model_fields:
                return []
            tp = tp.model_fields[part].annotation
        else:
            args = typing.get_args(tp)
            if not args:
                return []
            tp = args[-1]
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _unwrap(tp: Any) -> Any:
    """Optional[X] -> X."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType) and len(args) == 1:
        return args[0]
    return tp


def recipe_json_schema(registry: Registry) -> dict[str, Any]:
    """The recipe's JSON Schema, with every registered step's params (for editors)."""
    schema = RecipeModel.model_json_schema()
    defs = schema.setdefault("$defs", {})

    def options(kind: str) -> list[dict[str, Any]]:
        out = []
        for name in sorted(registry.names(kind)):
            info = registry.get(name)
            p = info.cls.Params.model_json_schema(ref_template="#/$defs/{model}")
            defs.update(p.pop("$defs", {}))
            p["title"] = f"{name} params"
            props: dict[str, Any] = {name: {"anyOf": [p, {"type": "null"}]}}
            if kind == "transform":
                props["limits"] = {"$ref": "#/$defs/Limits"}
            out.append(
                {
                    "type": "object",
                    "properties": props,
                    "required": [name],
                    "additionalProperties": False,
                    "description": info.cls.description,
                }
            )
        return out

    target = defs["Target"]
    target["properties"]["steps"]["items"] = {"anyOf": options("transform")}
    check_props = {}
    for item in options("check"):
        for name, prop in item["properties"].items():  # a check's own limits sit in its params
            params = prop["anyOf"][0]
            params.setdefault("properties", {})["limits"] = {"$ref": "#/$defs/Limits"}
            check_props[name] = prop
    target["properties"]["checks"] = {
        "type": "object",
        "properties": check_props,
        "additionalProperties": False,
    }
    return schema
