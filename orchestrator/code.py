"""The code a step runs with, by content: part of every task key.

A built-in step's key holds the digest of its module and of the package modules it imports
(transitively: e.g. the runtime helpers in ``runtime/engines.py`` and ``runtime/hf.py``), so editing a
step without bumping its ``version`` cannot serve a stale artifact. A plugin file's key holds its
own digest and those of the helper modules beside it that it imports. The engine's own modules
(the step contract, errors, hashing, formats) are left out: they do not change what a step
computes. Imports are found by reading the source (never by importing it), which costs well under
a millisecond per module.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path

from orchestrator.hashing import sha256_bytes

# engine modules every step imports that do not change its output
ENGINE = frozenset({"orchestrator", "orchestrator.step", "orchestrator.errors",
                    "orchestrator.hashing", "orchestrator.formats", "orchestrator.code"})
# names after ``import``: a parenthesized list may span lines, a bare one ends with its line
_FROM = re.compile(r"^[ \t]*from[ \t]+([\w.]+)[ \t]+import[ \t]+(?:\(([^)]*)\)|([\w, \t]+))", re.M)
_IMPORT = re.compile(r"^[ \t]*import[ \t]+([\w., \t]+)", re.M)
PACKAGE_DIR = Path(__file__).resolve().parent


def imported_names(text: str) -> set[str]:
    """Dotted names a module's source imports (``from a.b import c`` gives a.b and a.b.c)."""
    names: set[str] = set()
    for mod, grouped, bare in _FROM.findall(text):
        items = grouped or bare
        names.add(mod)
        names.update(f"{mod}.{i.strip().split()[0]}" for i in items.split(",") if i.strip())
    for group in _IMPORT.findall(text):
        names.update(part.strip().split()[0] for part in group.split(",") if part.strip())
    return names


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
    found = _walk(module, lambda m: None if m in ENGINE else _package_file(m), _read_package_module)
    return dict(sorted(found.items()))


def plugin_code(path: Path) -> dict[str, str]:
    """{module: digest} of the helper modules beside a plugin file that it imports (the file's
    own digest is its version already)."""
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
    found = _walk("__plugin__", locate.get)
    found.pop("__plugin__", None)
    return dict(sorted(found.items()))
