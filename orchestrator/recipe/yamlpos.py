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


MAX_VALUES = 100_000  # values after alias expansion: a recipe is small; a YAML bomb is not
MAX_DEPTH = 50  # nesting levels: a recipe needs about six; Python's stack would give out near 500
MERGE_TAG = "tag:yaml.org,2002:merge"
STR_TAG = "tag:yaml.org,2002:str"
_PLAIN_TAGS: dict[type[yaml.Node], str] = {yaml.MappingNode: "tag:yaml.org,2002:map",
                                           yaml.SequenceNode: "tag:yaml.org,2002:seq"}
_KEY_TYPES = (str, int, float, bool)
_INFINITIES = (float("inf"), float("-inf"))


def load(text: str, file: str) -> tuple[Any, Positions]:
    pos = Positions(file)
    loader = _Loader(text)
    try:
        _check_depth(text, file)
        node = loader.get_single_node()
        if node is None:
            raise FatalError(f"empty recipe at {file}:1:1; see `deploy-build schema` for the format")
        return _Builder(pos).build(node, ()), pos
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
        problem = e.problem or str(e).splitlines()[0]
        hint = ("recipes are plain YAML: remove the tag" if "constructor for the tag" in problem
                else "fix the syntax there")
        raise FatalError(f"invalid YAML at {where}: {problem}; {hint}") from None
    except yaml.YAMLError as e:  # e.g. a control character the reader refuses
        at = getattr(e, "position", None)
        place = file if at is None else str(
            Location(file, text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)))
        what = getattr(e, "reason", None) or str(e).splitlines()[0]
        raise FatalError(f"invalid YAML at {place}: {what}; remove the character there") from None
    finally:
        loader.dispose()


def _check_depth(text: str, file: str) -> None:
    """Refuse deep nesting from the flat event stream, before the composer (C code that recurses
    per level: ``[[[...`` a few 100,000 levels deep would crash the process) builds nodes."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            mark = event.start_mark
            if depth > MAX_DEPTH:
                loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
                raise FatalError(f"value at {loc} is nested more than {MAX_DEPTH} levels deep; "
                                 "a recipe needs only a few levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    """Node tree -> Python values, recording positions; merge keys (<<) as PyYAML does them."""

    def __init__(self, pos: Positions) -> None:
        self.pos = pos
        self.ctor = yaml.SafeLoader("")
        self.count = 0

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise FatalError(f"recipe {self.pos.file} expands to more than {MAX_VALUES} values "
                             "(through aliases?); a recipe should be a few hundred lines")
        if len(path) > MAX_DEPTH:
            loc = Location(self.pos.file, *_mark(node))
            raise FatalError(f"value at {loc} is nested more than {MAX_DEPTH} levels deep; "
                             "a recipe needs only a few levels")
        self.pos.values.setdefault(path, _mark(node))
        plain = _PLAIN_TAGS.get(type(node))
        if plain is not None and node.tag != plain:  # e.g. !!python/object/apply:os.system [..]
            loc = Location(self.pos.file, *_mark(node))
            raise FatalError(f"invalid YAML at {loc}: tag {node.tag!r} is not allowed; recipes are "
                             "plain YAML: remove the tag")
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        if node.tag == STR_TAG:
            return node.value
        value = self._construct(node)
        if isinstance(value, float) and (value != value or value in _INFINITIES):
            loc = Location(self.pos.file, *_mark(node))
            raise FatalError(f"{node.value} at {loc} is not allowed; give a finite number")
        return value

    def _construct(self, node: yaml.Node) -> Any:
        try:
            return self.ctor.construct_object(node, deep=True)
        except ValueError as e:  # e.g. an int of more than 4300 digits (sys.int_info)
            loc = Location(self.pos.file, *_mark(node))
            raise FatalError(f"value at {loc} cannot be read: {e}; give a smaller value") from None

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        for knode, vnode in node.value:
            if knode.tag == MERGE_TAG:
                sources = vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]
                for src in sources:
                    if not isinstance(src, yaml.MappingNode):
                        loc = Location(self.pos.file, *_mark(src))
                        raise FatalError(f"merge key '<<' at {loc} needs a mapping (an &anchor)")
                    for k, v in self._mapping(src, path).items():
                        merged.setdefault(k, v)
                continue
            # a plain string key (the usual case) needs none of the constructor's machinery
            key = knode.value if knode.tag == STR_TAG else self._construct(knode)
            if not isinstance(key, _KEY_TYPES) or key is None:
                loc = Location(self.pos.file, *_mark(knode))
                raise FatalError(f"mapping key at {loc} must be a plain string")
            key = str(key) if not isinstance(key, str) else key
            if key in out:
                loc = Location(self.pos.file, *_mark(knode))
                raise FatalError(f"duplicate key {key!r} at {loc}; remove one of them")
            self.pos.keys[path + (key,)] = _mark(knode)
            out[key] = self.build(vnode, path + (key,))
        for k, v in merged.items():
            out.setdefault(k, v)
        return out
