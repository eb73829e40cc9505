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

from pydantic import BaseModel, Field, PositiveInt, ValidationError, field_validator

from orchestrator import yamlpos
from orchestrator.errors import FatalError
from orchestrator.hashing import canonical_json, sha256_bytes
from orchestrator.registry import Registry, StepInfo, plugin_hint
from orchestrator.step import Hardware, _Strict

# recipe and target names become folder names under build/: checked whole (re.fullmatch: a `$`
# would match before a trailing newline) and short enough for any file system
ALLOW_PLUGINS_ENV = "DEPLOY_BUILD_ALLOW_PLUGINS"  # os.pathsep-separated plugin files or folders
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
MAX_NAME = 100


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


class Target(_Strict):
    hardware: Hardware = Field(default_factory=Hardware)
    steps: list[dict[str, dict[str, Any] | None]] = Field(
        min_length=1, description="Each item: 'step-name: {params}', and optionally 'limits: "
        "{timeout_s, max_memory_mb}' beside it.")
    checks: dict[str, dict[str, Any] | None] = Field(default_factory=dict)


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
class Recipe:
    path: Path
    name: str
    digest: str
    model: RecipeModel
    steps: dict[str, tuple[StepUse, ...]]
    checks: dict[str, tuple[StepUse, ...]]
    registry: Registry
    positions: yamlpos.Positions

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
    for tname, target in model.targets.items():
        steps[tname], checks[tname] = _target_uses(registry, tname, target, model.limits, pos)
    name = model.name or path.stem
    if model.name is None and _name_problem(name):
        raise FatalError(f"recipe name {name!r} (the file name of {display}) "
                         f"{_name_problem(name)}; set 'name:' in the recipe")
    m = model.model
    if m.revision is not None and (m.source.startswith("package:") or (path.parent / m.source).exists()):
        raise FatalError(f"model.revision at {pos.at(('model', 'revision'))} only applies to hub ids; "
                         "remove it (a local or package source is pinned by its content digest)")
    return Recipe(path, name, sha256_bytes(raw), model, steps, checks, registry, pos)


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


def _target_uses(registry: Registry, tname: str, target: Target, recipe: Limits,
                 pos: yamlpos.Positions) -> tuple[tuple[StepUse, ...], tuple[StepUse, ...]]:
    """A target's step uses (in order, each with its limits) and check uses (by name)."""
    base: tuple[str | int, ...] = ("targets", tname)
    uses = []
    for i, entry in enumerate(target.steps):
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
    checks = tuple(_check_use(registry, cname, cparams, recipe, pos, base)
                   for cname, cparams in sorted(target.checks.items()))
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
