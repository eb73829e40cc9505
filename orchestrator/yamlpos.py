"""Safe YAML loading that remembers where every key and value came from (file:line:col)."""

from __future__ import annotations

from typing import Any

import yaml

from orchestrator.errors import FatalError, Location

Path_ = tuple[str | int, ...]

try:  # libyaml is ~10x faster; fall back to the pure-Python loader where it is missing
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


class Positions:
    """Where each value (and each mapping key) of a loaded document sits in its file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.values: dict[Path_, tuple[int, int]] = {}
        self.keys: dict[Path_, tuple[int, int]] = {}

    def at(self, path: Path_, key: bool = False) -> Location:
        """The closest known location: the key itself when asked, else the value, else a parent."""
        table = self.keys if key else self.values
        p = tuple(path)
        while p:
            if p in table:
                return Location(self.file, *table[p])
            if key and p in self.values:
                return Location(self.file, *self.values[p])
            p = p[:-1]
        line, col = self.values.get((), (1, 1))
        return Location(self.file, line, col)


def load(text: str, file: str) -> tuple[Any, Positions]:
    pos = Positions(file)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
        raise FatalError(f"invalid YAML at {where}: {e.problem or e}; fix the syntax there") from None
    finally:
        loader.dispose()
    if node is None:
        raise FatalError(f"empty recipe at {file}:1:1; see `deploy-build schema` for the format")
    constructor = yaml.SafeLoader("")
    return _build(node, (), pos, constructor), pos


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _build(node: yaml.Node, path: Path_, pos: Positions, ctor: yaml.SafeLoader) -> Any:
    pos.values[path] = _mark(node)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            key = ctor.construct_object(knode, deep=True)
            if not isinstance(key, str | int | float | bool) or key is None:
                loc = Location(pos.file, *_mark(knode))
                raise FatalError(f"mapping key at {loc} must be a plain string")
            key = str(key) if not isinstance(key, str) else key
            if key in out:
                loc = Location(pos.file, *_mark(knode))
                raise FatalError(f"duplicate key {key!r} at {loc}; remove one of them")
            pos.keys[path + (key,)] = _mark(knode)
            out[key] = _build(vnode, path + (key,), pos, ctor)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), pos, ctor) for i, item in enumerate(node.value)]
    return ctor.construct_object(node, deep=True)
