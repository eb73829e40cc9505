"""Fuzzed recipes (issue 8): random YAML structures, wrong types, huge values, unicode, deep
nesting, tags, anchors. The loader either loads the recipe or raises FatalError whose message
names file:line; never another exception, never a tag that runs code. A few cases go through the
real command line (`--dry-run`): exit 0 or 1, never a traceback.

Hypothesis runs without a database (``database=None``) and derandomized, so a run is repeatable
and leaves nothing behind; the counts of cases are printed (``pytest -s``) and in
docs/reliability.md.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import run_cli
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from orchestrator.errors import FatalError
from orchestrator.recipe import load_recipe
from orchestrator.registry import Registry

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
IN_PROCESS_CASES = 300
CLI_CASES = 10

BASE: dict[str, Any] = {
    "name": "demo",
    "plugins": ["fake_steps.py"],
    "model": {"source": "./model", "task": "feature-extraction"},
    "inputs": {"shapes": {"batch": [1, 2], "sequence": [8]}},
    "targets": {
        "a": {
            "hardware": {"device": "cpu"},
            "steps": [{"fake-upper": {"suffix": "!", "sleep": 0.0}}, {"fake-tree": {"files": 2}}],
            "checks": {"fake-length": {"max_bytes": 1000}},
        },
        "b": {"steps": [{"fake-upper": None}, {"fake-const": {"text": "hello", "salt": 3}}]},
    },
}

# YAML fragments that must never run code or crash the loader
SNIPPETS = [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/apply:os.system\n  - touch {marker}",
    "!!python/object/new:subprocess.Popen [[touch, {marker}]]",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/object:pathlib.Path {}",
    "!!binary aGVsbG8=",
    "!!timestamp 2001-12-14t21:59:43.10-05:00",
    "!!set {a: null}",
    "!!omap [a: 1]",
    "!!float nan",
    "!!int 0x7fffffffffffffffffffffffffff",
    "!custom {x: 1}",
    "!<tag:example.com,2000:x> 1",
    "&anchor {fake-upper: {suffix: x}}",
    "*anchor",
    "*undefined",
    "{<<: *anchor}",
    "{<<: [1, 2]}",
    "? [complex, key]\n  : 1",
    "\"\\ud800\\udfff\\x00\\x1b[31m\"",
    "\"\\u202e\\u0000\"",
    "1e400",
    "-.inf",
    "9" * 5000,
    "[" * 5000 + "]" * 5000,
    "{a: " * 300 + "1" + "}" * 300,
    "'unterminated",
    "\t- tab",
    "%YAML 1.1\n---",
    "--- a\n--- b",
    "\x00",
    "\ufeff",
    "@reserved",
    "",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**18, max_value=10**400) | st.integers(max_value=-(10**18)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),  # any code point but surrogates, control characters included
    st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Cf", "Zl", "Zp", "Co"]),
            max_size=10),
    st.sampled_from(["", "fake-upper", "fake-length", "../../etc/passwd", "/etc/passwd",
                     "package:nope", "org/name", "cuda", "a" * 2000, "yes", "~", "0o777"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.one_of(st.text(max_size=10), st.sampled_from(["steps", "checks", "model", "plugins",
                                                         "targets", "<<", "name"])),
        inner, max_size=4),
    max_leaves=12,
)


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _paths(v, prefix + (i,))


def _replace(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    if isinstance(tree, dict):
        return {k: (_replace(v, path[1:], value) if k == path[0] else v) for k, v in tree.items()}
    return [_replace(v, path[1:], value) if i == path[0] else v for i, v in enumerate(tree)]


def _rename(tree: Any, path: tuple[Any, ...], new: str) -> Any:
    if len(path) == 1:
        return {(new if k == path[0] else k): v for k, v in tree.items()}
    if isinstance(tree, dict):
        return {k: (_rename(v, path[1:], new) if k == path[0] else v) for k, v in tree.items()}
    return [_rename(v, path[1:], new) if i == path[0] else v for i, v in enumerate(tree)]


def _dump(tree: Any, unicode: bool) -> str:
    return yaml.safe_dump(tree, allow_unicode=unicode, sort_keys=False, default_flow_style=False)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """The valid recipe with one to three values (or keys) replaced by random ones."""
    tree = BASE
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(tree))[1:]))
        if path and isinstance(path[-1], str) and draw(st.booleans()):  # rename the key instead
            new = draw(st.text(max_size=12) | st.sampled_from(["stepz", "target", "plugin"]))
            tree = _rename(tree, path, new)
            continue
        tree = _replace(tree, path, draw(values))
    return _dump(tree, draw(st.booleans()))


@st.composite
def spliced(draw: st.DrawFn, marker: str) -> str:
    """The valid recipe's text with a raw YAML snippet (a tag, an alias, junk) put in place of a
    value, or inserted as a line of its own."""
    lines = _dump(BASE, True).splitlines()
    i = draw(st.integers(0, len(lines) - 1))
    snippet = draw(st.sampled_from(SNIPPETS)).replace("{marker}", marker)
    line = lines[i]
    if ": " in line and draw(st.booleans()):
        lines[i] = line.split(": ", 1)[0] + ": " + snippet
    elif draw(st.booleans()):
        lines[i] = line + " " + snippet
    else:
        lines.insert(i, " " * draw(st.integers(0, 6)) + snippet)
    return "\n".join(lines) + "\n"


def recipes(marker: str) -> st.SearchStrategy[str]:
    top_level = values.map(lambda v: _dump(v, True))
    return st.one_of(mutated(), spliced(marker), top_level,
                     st.text(max_size=200))  # raw text: anything the YAML reader may refuse


@pytest.fixture(scope="module")
def project() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="fuzz-recipes-"))
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text("{}")
    shutil.copy(FIXTURES / "fake_steps.py", root / "fake_steps.py")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def check_loads_or_fails_cleanly(root: Path, text: str) -> str:
    """Load text as a recipe; 'ok' or 'error'. Anything but FatalError with a location fails."""
    path = root / "r.yaml"
    path.write_text(text, encoding="utf-8")
    marker = root / "MARKER"
    try:
        load_recipe(path, Registry(entry_points=False))
        outcome = "ok"
    except FatalError as e:
        msg = str(e)
        assert re.search(re.escape(str(path)) + r":\d+", msg), f"no file:line in {msg!r}"
        outcome = "error"
    assert not marker.exists(), "a YAML tag ran code"
    return outcome


def test_fuzzed_recipes_load_or_fail_with_a_location(project: Path) -> None:
    marker = str(project / "MARKER")
    counts = {"ok": 0, "error": 0}

    @settings(max_examples=IN_PROCESS_CASES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(recipes(marker))
    # found by the fuzzer: nesting beyond Python's stack was a RecursionError (and far deeper
    # nesting crashed libyaml's composer); a tag on a mapping or list was silently dropped
    @example("a: " + "[" * 600 + "]" * 600)
    @example("a: " + "[" * 300_000 + "]" * 300_000)
    @example("a: " + "9" * 5000)
    @example("9" * 5000 + ": 1")
    @example(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    @example("model: !!set {source: null}\ntargets: {}\n")
    def case(text: str) -> None:
        counts[check_loads_or_fails_cleanly(project, text)] += 1

    case()
    total = counts["ok"] + counts["error"]
    print(f"\nfuzzed recipes, in process: {total} cases ({counts['ok']} loaded, "
          f"{counts['error']} refused with a location)")
    assert total >= IN_PROCESS_CASES // 2
    assert counts["error"] > 0


def test_fuzzed_recipes_through_the_cli_exit_1_without_a_traceback(project: Path) -> None:
    marker = str(project / "MARKER")
    ran: list[int] = []

    @settings(max_examples=CLI_CASES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(recipes(marker))
    @example("a: " + "[" * 300_000 + "]" * 300_000)
    @example('model: {source: "\\ud800\\x1b[2J"}\ntargets: "\\u202e"\n')
    def case(text: str) -> None:
        path = project / "r.yaml"
        path.write_text(text, encoding="utf-8")
        r = run_cli(str(path), "--dry-run", "--cache", str(project / "cache"),
                    "--out", str(project / "build"))
        assert "Traceback" not in r.stderr
        assert r.returncode in (0, 1), r.stderr
        if r.returncode == 1:
            assert r.stderr.startswith("error: "), r.stderr
            assert str(path) in r.stderr
        assert not Path(marker).exists()
        ran.append(r.returncode)

    case()
    print(f"\nfuzzed recipes, through the CLI: {len(ran)} cases "
          f"({ran.count(0)} exit 0, {ran.count(1)} exit 1)")
    assert len(ran) >= CLI_CASES // 2
