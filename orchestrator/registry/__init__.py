"""One registry for every step: built-ins, the `deploy_build.steps` entry points, recipe plugins.

Each step is validated when registered; a bad plugin gets a message naming it and what is wrong.
A plugin is code that runs with the user's rights, so each is imported only when a step it
provides is asked for: a built-in by its module, an entry point by its name (the step's name),
a plugin file by the step names its source declares (read with ``ast``, without running it).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator import __version__
from orchestrator.errors import FatalError
from orchestrator.hashing import sha256_file
from orchestrator.registry.code import builtin_code, installed_code, plugin_code
from orchestrator.step import KNOWN_INPUTS, Hardware, Resources, Step

ENTRY_POINT_GROUP = "deploy_build.steps"

# name -> "module:Class". Imported only when a recipe uses the step (keeps start-up fast).
BUILTINS: dict[str, str] = {
    "export-onnx": "orchestrator.steps.export_onnx:ExportOnnx",
    "ort-optimize": "orchestrator.steps.ort_optimize:OrtOptimize",
    "ort-quantize": "orchestrator.steps.ort_quantize:OrtQuantize",
    "onnx-slim": "orchestrator.steps.onnx_slim:OnnxSlim",
    "torchscript-export": "orchestrator.steps.torchscript_export:TorchscriptExport",
    "openvino-convert": "orchestrator.steps.openvino_convert:OpenvinoConvert",
    "nncf-quantize": "orchestrator.steps.nncf_quantize:NncfQuantize",
    "tensorrt-build": "orchestrator.steps.tensorrt_build:TensorrtBuild",
    "litert-convert": "orchestrator.steps.litert_convert:LitertConvert",
    "litert-quantize": "orchestrator.steps.litert_quantize:LitertQuantize",
    "parity": "orchestrator.steps.parity:Parity",
    "benchmark": "orchestrator.steps.benchmark:Benchmark",
    "size": "orchestrator.steps.size:Size",
    "accuracy": "orchestrator.steps.accuracy:Accuracy",
}
BUILTIN_KINDS: dict[str, str] = {"parity": "check", "benchmark": "check", "size": "check",
                                 "accuracy": "check"}
_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


@dataclass(frozen=True)
class StepInfo:
    name: str
    cls: type[Step[Any]]
    origin: str  # "built-in", "entry point <dist>", "plugin <path>"
    dist: str
    dist_version: str
    ref: dict[str, str]  # how a worker process loads the class again
    code: dict[str, str] = field(default_factory=dict)  # module -> digest of the code it runs

    @property
    def kind(self) -> str:
        return self.cls.kind


class Registry:
    def __init__(self, entry_points: bool = True) -> None:
        self._steps: dict[str, StepInfo] = {}
        self._lazy: dict[str, str] = {n: r for n, r in BUILTINS.items() if _module_exists(r)}
        self._kinds: dict[str, str] = {n: BUILTIN_KINDS.get(n, "transform") for n in self._lazy}
        self._entry_points_loaded = not entry_points
        self._names: dict[str | None, list[str]] = {}
        self._files: dict[tuple[Path, int, int, int], list[StepInfo]] = {}
        self._lazy_eps: dict[str, Any] = {}  # step name -> entry point, not imported yet
        self._lazy_files: dict[str, tuple[Path, str]] = {}  # step name -> (plugin file, where)

    # ---- lookup -------------------------------------------------------------------------
    def names(self, kind: str | None = None) -> list[str]:
        """Step names; asking for one kind imports the entry points and plugin files not yet
        imported (their kind is known only then)."""
        self._load_entry_points()
        if kind is not None:
            for name in [*self._lazy_eps, *self._lazy_files]:
                if name in self._lazy_eps or name in self._lazy_files:
                    self.get(name)
        if kind not in self._names:
            names = set(self._steps) | set(self._lazy) | set(self._lazy_eps) | set(self._lazy_files)
            self._names[kind] = sorted(n for n in names if kind is None or self._kind(n) == kind)
        return self._names[kind]

    def _kind(self, name: str) -> str:
        if name in self._steps:
            return self._steps[name].kind
        return self._kinds[name]

    def get(self, name: str) -> StepInfo:
        if name not in self._steps and name in self._lazy:
            module, _, attr = self._lazy.pop(name).partition(":")
            cls = getattr(importlib.import_module(module), attr)
            self.register(cls, origin="built-in", dist="deploy-build", dist_version=__version__,
                          ref={"module": module, "class": attr}, code=builtin_code(module))
        if name not in self._steps:
            self._load_entry_points()
        if name not in self._steps and name in self._lazy_eps:
            self._load_entry_point(self._lazy_eps.pop(name))
            self._names.clear()
        if name not in self._steps and name in self._lazy_files:
            path, where = self._lazy_files[name]
            for other in [n for n, (p, _) in self._lazy_files.items() if p == path]:
                del self._lazy_files[other]
            self._names.clear()
            self.load_file(path, where)
            if name not in self._steps:
                at = f" (listed at {where})" if where else ""
                raise FatalError(f"plugin {path}{at} declares a class with name = {name!r} but "
                                 "no Step subclass of that name")
        if name not in self._steps:
            raise KeyError(name)
        return self._steps[name]

    # ---- registration -------------------------------------------------------------------
    def register(self, cls: Any, origin: str, dist: str, dist_version: str,
                 ref: dict[str, str], code: dict[str, str] | None = None) -> StepInfo:
        problems = validate_step(cls)
        label = getattr(cls, "__name__", repr(cls))
        if problems:
            raise FatalError(f"step class {label} from {origin} is not a valid step: "
                             + "; ".join(problems))
        name = cls.name
        existing = self._steps.get(name)
        if existing is not None or name in self._lazy or name in self._lazy_eps:
            first = existing.origin if existing else (
                "built-in" if name in self._lazy else "an installed entry point")
            if existing is not None and existing.cls is cls:
                return existing
            raise FatalError(f"step {name!r} from {origin} clashes with the step of the same name "
                             f"from {first}; rename one of them")
        info = StepInfo(name, cls, origin, dist, dist_version, ref, code or {})
        self._steps[name] = info
        self._names.clear()
        return info

    def declare_file(self, path: Path, where: str = "") -> None:
        """Note a plugin file's steps without importing it: it is imported when one of them is
        asked for. A file whose step names cannot be read from its source (no class with a
        literal ``name = "..."``, a syntax error) or that names a step known already is
        imported now, which says what is wrong as before."""
        _plugin_stat(path, where)
        declared = plugin_step_names(path)
        self._load_entry_points()
        known = set(self._steps) | set(self._lazy) | set(self._lazy_eps)
        if declared is None or known & set(declared) or any(
                self._lazy_files[n][0] != path for n in declared if n in self._lazy_files):
            self.load_file(path, where)
            return
        for name in declared:
            self._lazy_files.setdefault(name, (path, where))
        self._names.clear()

    def load_file(self, path: Path, where: str = "") -> list[StepInfo]:
        """Register every Step subclass defined in a plugin file (importing it runs its code)."""
        at = f" (listed at {where})" if where else ""
        st = _plugin_stat(path, where)
        seen = (path, st.st_ino, st.st_mtime_ns, st.st_size)
        if seen in self._files:  # several recipes of one build list the same plugin
            return self._files[seen]
        digest = sha256_file(path)
        modname = f"deploy_build_plugin_{path.stem}_{digest[:12]}"
        module = sys.modules.get(modname)
        if module is None:
            if path.suffix != ".py":
                raise FatalError(f"plugin {path}{at} is not a Python file (.py)")
            spec = importlib.util.spec_from_file_location(modname, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[modname] = module
            if str(path.parent) not in sys.path:  # helper modules beside it (keyed below)
                sys.path.append(str(path.parent))
            try:
                spec.loader.exec_module(module)
            except (Exception, SystemExit) as e:  # a plugin that exits while importing, too
                del sys.modules[modname]
                raise FatalError(f"plugin {path}{at} failed to import: "
                                 f"{type(e).__name__}: {e}") from None
        found = [
            obj for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, Step) and obj is not Step
            and obj.__module__ == modname and "name" in vars(obj)
        ]
        if not found:
            raise FatalError(f"plugin {path}{at} defines no Step subclass with a 'name'")
        code = plugin_code(path)  # the helpers beside the file: once for all its steps
        infos = [
            self.register(cls, origin=f"plugin {path}", dist=f"file:{path.name}",
                          dist_version=digest, code=code,
                          ref={"file": str(path), "class": cls.__name__, "digest": digest})
            for cls in found
        ]
        self._files[seen] = infos
        return infos

    def _load_entry_points(self) -> None:
        """List the entry points (their step names); each is imported when its step is asked for."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in _entry_points():
            self._lazy_eps.setdefault(ep.name, ep)
        self._names.clear()

    def _load_entry_point(self, ep: Any) -> None:
        dist = ep.dist.name if ep.dist else "unknown"
        version = ep.dist.version if ep.dist else "0"
        origin = f"entry point {ep.name} of {dist} {version}"
        try:
            cls = ep.load()
        except Exception as e:
            raise FatalError(f"step plugin {origin} failed to load: {type(e).__name__}: {e}; "
                             f"fix or uninstall {dist}") from None
        if getattr(cls, "name", None) != ep.name:
            raise FatalError(f"step plugin {origin} provides a step named "
                             f"{getattr(cls, 'name', None)!r}; the entry point must be named after "
                             f"its step; fix or uninstall {dist}")
        module, _, attr = ep.value.partition(":")
        code = installed_code(module, getattr(sys.modules.get(module), "__file__", None))
        self.register(cls, origin=origin, dist=dist, dist_version=version,
                      ref={"module": module, "class": attr}, code=code)


def _plugin_stat(path: Path, where: str) -> Any:
    at = f" (listed at {where})" if where else ""
    try:
        st = path.stat()
    except OSError:
        st = None
    if st is None or not path.is_file():
        fix = "fix the path" if where == "--plugins" else "fix the path in 'plugins:'"
        raise FatalError(f"plugin file {path} not found{at}; {fix}")
    return st


def plugin_step_names(path: Path) -> list[str] | None:
    """The step names a plugin file declares: ``name = "..."`` in its top-level classes, read
    from the source without running it; None when that cannot tell (then it is imported)."""
    try:
        st = path.stat()
    except OSError:
        return None
    names = _declared_names(str(path), st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)
    return list(names) if names is not None else None


@functools.lru_cache(maxsize=1024)
def _declared_names(path: str, *stat_sig: int) -> tuple[str, ...] | None:
    """plugin_step_names, once per version of the file (a nightly's recipes share plugins)."""
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return None
    names = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            target = value = None
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                target, value = stmt.targets[0], stmt.value
            elif isinstance(stmt, ast.AnnAssign):
                target, value = stmt.target, stmt.value
            if isinstance(target, ast.Name) and target.id == "name" and \
                    isinstance(value, ast.Constant) and isinstance(value.value, str):
                names.append(value.value)
    return tuple(names) or None


MAX_NEARBY = 200  # plugin files read for the hint of an unknown step, at most


def nearby_plugins(name: str, recipe: Path) -> list[Path]:
    """Plugin files near a recipe (its folder, plugins/ in it, plugins/ beside it) whose source
    declares step ``name``: read with ``ast``, never imported (for the hint of an unknown step)."""
    folder = recipe.parent
    found: list[Path] = []
    seen = 0
    for d in (folder, folder / "plugins", folder.parent / "plugins"):
        for path in sorted(d.glob("*.py")) if d.is_dir() else []:
            seen += 1
            if seen > MAX_NEARBY:
                return found
            with contextlib.suppress(OSError):
                if path.stat().st_size < 2**20 and name in (plugin_step_names(path) or []) \
                        and path.resolve() not in [f.resolve() for f in found]:
                    found.append(path)
    return found


def plugin_hint(name: str, recipe: Path) -> str:
    """'list it under plugins:' when a plugin file near the recipe defines the step, else ''."""
    found = nearby_plugins(name, recipe)
    if not found:
        return ""
    rel = [os.path.relpath(p, recipe.parent) for p in found]
    return (f"{rel[0]} defines it; list it under 'plugins:' in the recipe "
            f"(plugins: [{rel[0]}])" + (f" (also in {', '.join(rel[1:])})" if rel[1:] else ""))


@functools.cache
def _entry_points() -> tuple[Any, ...]:
    """The installed `deploy_build.steps` entry points (scanned once per process)."""
    if not _some_distribution_names_the_group():
        return ()
    from importlib.metadata import entry_points

    return tuple(entry_points(group=ENTRY_POINT_GROUP))


def _some_distribution_names_the_group() -> bool:
    """Whether an entry_points.txt on sys.path mentions the group at all: a few small file reads,
    where importlib.metadata parses every installed distribution's metadata (a no-op build of a
    recipe with built-in steps only would pay ~15 ms for that). A mention sends the real scan."""
    for entry in sys.path:
        folder = entry or "."
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for n in names:
            if not n.endswith((".dist-info", ".egg-info")):
                continue
            try:
                with open(os.path.join(folder, n, "entry_points.txt"), "rb") as f:
                    if ENTRY_POINT_GROUP.encode() in f.read():
                        return True
            except OSError:
                continue
    return False


def load_step(ref: dict[str, str]) -> type[Step[Any]]:
    """Load a step class in a worker process from a StepInfo.ref."""
    if "file" in ref:
        if "digest" in ref and sha256_file(ref["file"]) != ref["digest"]:
            # the task's key holds the digest planned with: other code must not run under it
            raise FatalError(f"plugin {ref['file']} changed while the build was running; "
                             "run the build again")
        reg = Registry(entry_points=False)
        for info in reg.load_file(Path(ref["file"])):
            if info.cls.__name__ == ref["class"]:
                return info.cls
        raise FatalError(f"plugin {ref['file']} no longer defines {ref['class']}")
    cls: type[Step[Any]] = getattr(importlib.import_module(ref["module"]), ref["class"])
    return cls


@functools.cache
def _module_exists(ref: str) -> bool:
    module = ref.partition(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def validate_step(cls: Any) -> list[str]:
    """What is wrong with a step class (empty: nothing)."""
    problems: list[str] = []
    if not (isinstance(cls, type) and issubclass(cls, Step)):
        return ["it does not subclass orchestrator.step.Step"]
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"'name' must be lowercase letters, digits and '-', got {name!r}")
    if not isinstance(getattr(cls, "version", None), str) or not cls.version:
        problems.append("'version' must be a non-empty string")
    params = getattr(cls, "Params", None)
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        problems.append("'Params' must be a pydantic BaseModel subclass")
    elif params.model_config.get("extra") != "forbid":
        problems.append("'Params' must forbid unknown fields (model_config = ConfigDict(extra='forbid'))")
    if cls.kind not in ("transform", "check"):
        problems.append(f"'kind' must be 'transform' or 'check', got {cls.kind!r}")
    bad_inputs = [i for i in cls.inputs if i not in KNOWN_INPUTS]
    if bad_inputs:
        problems.append(f"unknown inputs {bad_inputs}; inputs can be {list(KNOWN_INPUTS)}")
    if not isinstance(cls.outputs, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.strip("/") for k, v in cls.outputs.items()
    ):
        problems.append("'outputs' must map output names to file names")
    elif cls.kind == "transform" and "model" not in cls.outputs:
        problems.append("a transform step must declare a 'model' output")
    else:
        bad = [v for v in cls.outputs.values()
               if v.startswith(("/", "\\")) or ".." in v.replace("\\", "/").split("/")]
        if bad:
            problems.append(f"output file names must stay inside the task's folder: {bad}")
    problems += _format_problems(cls)
    problems += _toolchain_problems(cls)
    if not isinstance(cls.resources, Resources):
        problems.append("'resources' must be an orchestrator.step.Resources")
    if cls.run is Step.run:
        problems.append("it must implement run(self, ctx)")
    for attr in ("toolchain", "hardware_keys", "gate_fields", "inputs", "machine_keys"):
        value = getattr(cls, attr)
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            problems.append(f"'{attr}' must be a tuple of strings, got {value!r}")

    unknown_hw = [k for k in cls.hardware_keys if k not in Hardware.model_fields]
    if unknown_hw:
        problems.append(f"unknown hardware_keys {unknown_hw}; known: {sorted(Hardware.model_fields)}")
    from orchestrator.host.machine import MACHINE_FACTS

    unknown_machine = [k for k in cls.machine_keys if k not in MACHINE_FACTS]
    if unknown_machine:
        problems.append(f"unknown machine_keys {unknown_machine}; known: {sorted(MACHINE_FACTS)}")
    if cls.run is not Step.run and getattr(cls.run, "__code__", None) is not None \
            and cls.run.__code__.co_argcount != 2:
        problems.append("run must take exactly (self, ctx)")
    problems += _hook_problems(cls)
    for f in cls.gate_fields:
        if isinstance(params, type) and issubclass(params, BaseModel) and f not in params.model_fields:
            problems.append(f"gate field {f!r} is not a field of Params")
    return problems


# hooks of the first contract, each replaced by Step.plan (planning) or Step.judge (checks)
_OLD_HOOKS = {"complete_params": "plan", "inputs_for": "plan", "toolchain_for": "plan",
              "resources_for": "plan", "unused_params": "plan (Planned.unused)",
              "gate": "judge", "summarize": "judge"}


def _hook_problems(cls: Any) -> list[str]:
    """The hooks of the first contract are gone: say what replaces them; and the check
    attributes must be what the engine reads."""
    problems = [f"{hook}() is no longer called: implement {new}() instead (docs/plugins.md)"
                for hook, new in _OLD_HOOKS.items()
                if hook in vars(cls)]
    if cls.manifest_section not in ("checks", "benchmark"):
        problems.append(f"'manifest_section' must be 'checks' or 'benchmark', got "
                        f"{cls.manifest_section!r}")
    for attr in ("exclusive", "measures_speed"):
        if not isinstance(getattr(cls, attr), bool):
            problems.append(f"'{attr}' must be True or False")
    if getattr(cls.plan, "__func__", None) is None:
        problems.append("plan must be a classmethod: @classmethod def plan(cls, params, at)")
    return problems


def _format_problems(cls: Any) -> list[str]:
    """Every output has a format, and a step that reads ``model`` says which formats it takes."""
    from orchestrator.formats import FIXED_INPUTS

    problems: list[str] = []
    ins, outs = cls.input_formats, cls.output_formats
    if not isinstance(ins, dict) or not all(
            isinstance(k, str) and isinstance(v, tuple) and v and all(isinstance(f, str) for f in v)
            for k, v in ins.items()):
        return ["'input_formats' must map input names to tuples of format names, e.g. "
                "{'model': ('onnx',)}"]
    if not isinstance(outs, dict) or not all(isinstance(k, str) and isinstance(v, str) and v
                                             for k, v in outs.items()):
        return ["'output_formats' must map output names to format names, e.g. {'model': 'onnx'}"]
    inputs = cls.inputs if isinstance(cls.inputs, tuple) else ()
    if "model" in inputs and "model" not in ins:
        problems.append("it reads 'model' but does not say in which formats: add input_formats = "
                        "{'model': ('onnx',)} (or 'hf-model', 'openvino-ir', 'torchscript', 'any', "
                        "or a format of your own)")
    fixed = sorted(set(ins) & set(FIXED_INPUTS))
    extra = sorted(set(ins) - set(inputs) - set(FIXED_INPUTS))
    if fixed:
        problems.append(f"input_formats names {fixed}, whose formats are fixed; declare only 'model'")
    if extra:
        problems.append(f"input_formats names {extra}, which are not among its inputs")
    declared = cls.outputs if isinstance(cls.outputs, dict) else {}
    missing = sorted(set(declared) - set(outs))
    if missing:
        problems.append(f"outputs {missing} have no format: add output_formats = "
                        f"{{{', '.join(repr(m) + ': ...' for m in missing)}}} (e.g. 'onnx')")
    unknown = sorted(set(outs) - set(declared))
    if unknown:
        problems.append(f"output_formats names {unknown}, which are not among its outputs")
    if "any" in outs.values():
        problems.append("an output's format cannot be 'any': name what it holds")
    from orchestrator.formats import name_problem, shape_problem

    names = sorted({f for v in ins.values() for f in v} | set(outs.values()))
    problems += [p for p in (name_problem(n) for n in names) if p]
    problems += [p for o, f in sorted(outs.items()) if o in declared and isinstance(declared[o], str)
                 for p in [shape_problem(o, declared[o], f)] if p]
    return problems


def _toolchain_problems(cls: Any) -> list[str]:
    """A toolchain package must be installed unless the step declares it optional (e.g.
    tensorrt, which only GPU machines have): otherwise its key would silently say
    'not-installed'."""
    from orchestrator.host.versions import dist_version

    optional = getattr(cls, "optional_toolchain", ())
    if not isinstance(optional, tuple) or not all(isinstance(o, str) for o in optional):
        return [f"'optional_toolchain' must be a tuple of strings, got {optional!r}"]
    toolchain = cls.toolchain if isinstance(cls.toolchain, tuple) else ()
    stray = [o for o in optional if o not in toolchain]
    if stray:
        return [f"optional_toolchain lists {stray}, which are not in its toolchain: a package "
                "listed only there would never be keyed; add it to toolchain as well (optional "
                "only means it may be missing on this machine)"]
    missing = [t for t in toolchain if t not in optional and dist_version(t) == "not-installed"]
    if missing:
        return [f"its toolchain {missing} is not installed; install it (pip install "
                f"{' '.join(missing)}) or, if the step can do without it, list it in "
                "optional_toolchain"]
    return []
