"""The code a step runs with, by content: part of every task key.

A built-in step's key holds the digest of its module and of the package modules it imports
(transitively: e.g. the runtime helpers in ``runtime/engines.py`` and ``runtime/hf.py``), so editing a
step without bumping its ``version`` cannot serve a stale artifact, and editing a module no step
reaches (a command, the report) re-runs nothing. A plugin file's key holds its own digest and those
of the helper modules beside it and of the ``orchestrator`` modules it imports (``orchestrator.runtime``
helpers); an installed plugin's (an entry point, editable or not) those of the modules of its own
package and of ``orchestrator`` that it imports. The engine's own modules (the step contract,
errors, hashing, formats) are left out: they do not change what a step computes.

Imports are found by reading the source (never by importing it), which costs well under a
millisecond per module: ``import a``, ``from a import b`` (also ``*``, also inside functions),
relative imports in a package, and ``importlib.import_module("a")`` / ``__import__("a")`` with a
constant name. A name computed at run time cannot be followed: keep such helpers beside the
plugin and import them by name.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path

from orchestrator.hashing import sha256_bytes

# engine modules every step imports that do not change its output
ENGINE = frozenset({"orchestrator", "orchestrator.step", "orchestrator.errors",
                    "orchestrator.hashing", "orchestrator.formats", "orchestrator.registry.code"})
# names after ``import``: a parenthesized list may span lines, a bare one ends with its line
_FROM = re.compile(r"^[ \t]*from[ \t]+([\w.]+)[ \t]+import[ \t]+(?:\(([^)]*)\)|([\w, \t*]+))", re.M)
# importlib.import_module("a.b") and __import__("a.b") with a constant name
_DYNAMIC = re.compile(r"""(?:import_module|__import__)\([ \t]*["']([\w.]+)["']""")
_IMPORT = re.compile(r"^[ \t]*import[ \t]+([\w., \t]+)", re.M)
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # orchestrator/


def imported_names(text: str) -> set[str]:
    """Dotted names a module's source imports (``from a.b import c`` gives a.b and a.b.c)."""
    names: set[str] = set()
    for mod, grouped, bare in _FROM.findall(text):
        items = grouped or bare
        names.add(mod)
        names.update(f"{mod}.{i.strip().split()[0]}" for i in items.split(",") if i.strip())
    for group in _IMPORT.findall(text):
        names.update(part.strip().split()[0] for part in group.split(",") if part.strip())
    names.update(_DYNAMIC.findall(text))
    return names


def _absolute(names: set[str], package: str) -> set[str]:
    """Relative names (``.helpers``, ``..util.x``) made absolute from the importing module's
    package; absolute names as they are."""
    out = set()
    for n in names:
        if not n.startswith("."):
            out.add(n)
            continue
        dots = len(n) - len(n.lstrip("."))
        base = package.split(".")[: max(0, len(package.split(".")) - (dots - 1))]
        rest = n[dots:]
        out.add(".".join([*base, rest]) if rest else ".".join(base))
    return out


def _locate_engine_free(module: str) -> Path | None:
    """An ``orchestrator`` module's file, unless it is one of the engine's own (ENGINE)."""
    return None if module in ENGINE else _package_file(module)


@functools.cache
def _package_file(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] != "orchestrator":
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _read_module(path: Path) -> tuple[str, set[str]]:
    """A module file's digest and the names it imports."""
    data = path.read_bytes()
    return sha256_bytes(data)[:16], imported_names(data.decode(errors="replace"))


# the package's own modules are read once per process (steps share their helpers); a plugin's
# helpers are read on every walk: a long-lived process may see them edited
_read_package_module = functools.cache(_read_module)


def _walk(start: str, locate: Callable[[str], Path | None],
          read: Callable[[Path], tuple[str, set[str]]] = _read_module) -> dict[str, str]:
    digests: dict[str, str] = {}
    todo = [start]
    while todo:
        name = todo.pop()
        path = locate(name)
        if name in digests or path is None:
            continue
        digests[name], names = read(path)
        todo.extend(names)
    return digests


@functools.cache
def builtin_code(module: str) -> dict[str, str]:
    """{module: digest} of a built-in step's module and the package modules it imports."""
    found = _walk(module, _locate_engine_free, _read_package_module)
    return dict(sorted(found.items()))


def plugin_code(path: Path) -> dict[str, str]:
    """{module: digest} of the helper modules beside a plugin file and of the ``orchestrator``
    modules it imports (the file's own digest is its version already)."""
    folder = path.parent
    locate: dict[str, Path] = {}
    for p in folder.glob("*.py"):
        locate[p.stem] = p
    for p in folder.glob("*/__init__.py"):
        locate[p.parent.name] = p
    for p in folder.glob("*/*.py"):
        locate[f"{p.parent.name}.{p.stem}"] = p
    locate.pop(path.stem, None)
    locate["__plugin__"] = path

    def find(name: str) -> Path | None:
        return locate.get(name) or (_locate_engine_free(name) if name.startswith("orchestrator.")
                                    else None)

    found = _walk("__plugin__", find)
    found.pop("__plugin__", None)
    return dict(sorted(found.items()))


def installed_code(module: str, file: str | None) -> dict[str, str]:
    """{module: digest} of an installed plugin's module (an entry point: ``file`` is its
    ``__file__``) and of the modules of its own top-level package and of ``orchestrator`` that it
    imports, relative imports included: an editable install's edits change its key although
    its version does not."""
    if not file:
        return {}
    top = module.split(".")[0]
    here = Path(file).resolve()
    depth = module.count(".") + (1 if here.name == "__init__.py" else 0)
    root = here.parents[depth] if depth < len(here.parents) else here.parent

    def find(name: str) -> Path | None:
        if name.startswith("orchestrator."):
            return _locate_engine_free(name)
        if name.split(".")[0] != top:
            return None
        base = root.joinpath(*name.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    def read(p: Path) -> tuple[str, set[str]]:
        if not p.is_relative_to(root):  # an orchestrator module
            return _read_package_module(p)
        digest, names = _read_module(p)
        rel = p.relative_to(root).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        package = ".".join(parts if p.name == "__init__.py" else parts[:-1])
        return digest, _absolute(names, package)

    return dict(sorted(_walk(module, find, read).items()))
