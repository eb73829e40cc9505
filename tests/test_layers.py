"""The package's layers and their one dependency order (docs/design.md): a module imports only
modules of its own layer or of the layers above it in LAYERS, lazy imports (inside functions)
included, and no two modules import each other, directly or around a cycle. Read from the source
(ast), like tests/test_function_length.py."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "orchestrator"

# top to bottom: each layer may import the ones above it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("the step contract", ("orchestrator", "orchestrator.errors", "orchestrator.hashing",
                           "orchestrator.step", "orchestrator.formats")),
    ("runtimes", ("orchestrator.runtime", "orchestrator.edge")),
    ("host", ("orchestrator.host",)),
    ("steps", ("orchestrator.steps",)),
    ("registry", ("orchestrator.registry",)),
    ("recipe", ("orchestrator.recipe",)),
    ("store", ("orchestrator.store",)),
    ("plan", ("orchestrator.plan",)),
    ("run", ("orchestrator.run", "orchestrator.testing")),
    ("targets", ("orchestrator.targets",)),
    ("session", ("orchestrator.session",)),
    ("review", ("orchestrator.review",)),
    ("commands", ("orchestrator.commands",)),
    ("entry", ("orchestrator.cli", "orchestrator.__main__")),
]
TOP_LEVEL_LIMIT = 12  # modules and packages directly in orchestrator/


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(name: str) -> int:
    best, where = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            exact_only = prefix == "orchestrator"
            if (name == prefix or (not exact_only and name.startswith(prefix + "."))) \
                    and len(prefix) > best:
                best, where = len(prefix), i
    assert where >= 0, f"{name} is in no layer: add it to LAYERS"
    return where


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The orchestrator modules a module imports, anywhere in it."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(mod: str) -> None:
        while mod and mod not in known:
            mod = mod.rpartition(".")[0]
        if mod:
            found.add(mod)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("orchestrator"):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if not base.startswith("orchestrator"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in known else base)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) \
                in ("import_module", "__import__") and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str) \
                and node.args[0].value.startswith("orchestrator"):
            add(node.args[0].value)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(path, name, known) for name, path in mods.items()}


def test_every_module_imports_only_its_layer_and_the_layers_above() -> None:
    bad = []
    for name, deps in sorted(graph().items()):
        mine = layer_of(name)
        for dep in sorted(deps):
            if layer_of(dep) > mine:
                bad.append(f"{name} ({LAYERS[mine][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_import_cycle_lazy_imports_included() -> None:
    g = graph()
    # a package's __init__ is imported with each of its modules: not a cycle of its own
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in g.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_top_of_the_package_shows_the_layers() -> None:
    top = sorted(p.name for p in PACKAGE.iterdir()
                 if (p.suffix == ".py" or (p / "__init__.py").is_file()))
    assert len(top) <= TOP_LEVEL_LIMIT + 10, top  # modules + packages
    files = [n for n in top if n.endswith(".py")]
    assert len(files) <= TOP_LEVEL_LIMIT, files
    every = {n for _, prefixes in LAYERS for n in prefixes}
    for name in top:
        dotted = "orchestrator." + name.removesuffix(".py")
        if name != "__init__.py":
            assert dotted in every, f"{dotted} is not named in LAYERS"


def test_the_public_plugin_paths_are_where_plugins_import_them() -> None:
    mods = modules()
    for public in ("orchestrator.step", "orchestrator.formats", "orchestrator.testing",
                   "orchestrator.runtime.hf"):
        assert public in mods, public
