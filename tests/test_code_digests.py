"""What a step's key holds of code (orchestrator/registry/code.py): the modules it computes with,
by content. Editing a module no step reaches changes no key; editing a helper a step computes
with changes that step's key only; plugin helpers reached through `import *`, a constant
`importlib.import_module`, `orchestrator` helpers and an installed package's relative imports are
keyed too (the holes of the reliability issue's item 13)."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.registry import code

STEPS = sorted(p.stem for p in (code.PACKAGE_DIR / "steps").glob("*.py") if p.stem != "__init__")


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of the orchestrator package that code digests are read from."""
    copy = tmp_path / "orchestrator"
    shutil.copytree(code.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(code, "PACKAGE_DIR", copy)
    _forget()
    yield copy
    _forget()


def _forget() -> None:
    for f in (code._package_file, code._read_package_module, code.builtin_code):
        f.cache_clear()


def digests() -> dict[str, dict[str, str]]:
    _forget()
    return {s: code.builtin_code(f"orchestrator.steps.{s}") for s in STEPS}


def edit(package: Path, rel: str) -> None:
    path = package / rel
    path.write_text(path.read_text() + "\n# edited\n")


def changed(before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]) -> list[str]:
    return sorted(s for s in STEPS if before[s] != after[s])


def test_editing_modules_no_step_computes_with_changes_no_key(package: Path) -> None:
    before = digests()
    for rel in ("commands/build.py", "review/markdown.py", "review/reportpage.py", "session.py",
                "cli.py", "plan/__init__.py", "plan/keys.py", "run/scheduler.py",
                "host/machine.py", "edge/litert_env.py", "targets/judge.py", "step.py",
                "formats.py", "errors.py", "hashing.py"):
        edit(package, rel)
    assert changed(before, digests()) == [
        "litert_convert", "litert_quantize"]  # they run in the LiteRT environment edge/ sets up


def test_editing_a_helper_re_runs_the_steps_that_compute_with_it(package: Path) -> None:
    before = digests()
    edit(package, "runtime/engines.py")
    engines = changed(before, digests())
    assert {"parity", "benchmark", "accuracy", "checks", "openvino_convert"} <= set(engines)
    assert "export_onnx" not in engines and "ort_optimize" not in engines

    before = digests()
    edit(package, "host/cpu.py")
    assert changed(before, digests()) == ["benchmark"]

    before = digests()
    edit(package, "host/versions.py")
    assert changed(before, digests()) == ["accuracy"]


def test_accuracy_and_benchmark_are_keyed_on_what_they_compute_with() -> None:
    _forget()
    accuracy = code.builtin_code("orchestrator.steps.accuracy")
    benchmark = code.builtin_code("orchestrator.steps.benchmark")
    assert "orchestrator.plan.keys" not in accuracy and "orchestrator.host.versions" in accuracy
    assert "orchestrator.host.machine" not in benchmark
    assert "orchestrator.edge.litert_env" not in benchmark
    assert "orchestrator.host.cpu" in benchmark and "orchestrator.host.conditions" in benchmark


def test_a_plugin_files_helpers_through_star_importlib_and_orchestrator_are_keyed(
        tmp_path: Path) -> None:
    (tmp_path / "star_helpers.py").write_text("SCALE = 2\n")
    (tmp_path / "dyn_helpers.py").write_text("SHIFT = 1\n")
    (tmp_path / "unused.py").write_text("X = 0\n")
    plugin = tmp_path / "my_step.py"
    plugin.write_text(textwrap.dedent("""\
        import importlib
        from star_helpers import *
        from orchestrator.runtime import hf

        def run():
            return importlib.import_module("dyn_helpers").SHIFT
        """))
    found = code.plugin_code(plugin)
    assert {"star_helpers", "dyn_helpers", "orchestrator.runtime.hf"} <= set(found)
    assert "unused" not in found
    before = dict(found)
    (tmp_path / "star_helpers.py").write_text("SCALE = 3\n")
    assert code.plugin_code(plugin)["star_helpers"] != before["star_helpers"]
    (tmp_path / "dyn_helpers.py").write_text("SHIFT = 2\n")
    assert code.plugin_code(plugin)["dyn_helpers"] != before["dyn_helpers"]


def test_an_installed_plugins_own_modules_are_keyed_so_an_editable_edit_re_runs_it(
        tmp_path: Path) -> None:
    pkg = tmp_path / "src" / "acme_steps"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("def scale(x):\n    return 2 * x\n")
    (pkg / "sub" / "util.py").write_text("from ..helpers import scale\n")
    (pkg / "steps.py").write_text("from .sub import util\nfrom orchestrator.runtime import hf\n"
                                  "import numpy\n")
    found = code.installed_code("acme_steps.steps", str(pkg / "steps.py"))
    assert {"acme_steps.steps", "acme_steps.sub", "acme_steps.sub.util", "acme_steps.helpers",
            "orchestrator.runtime.hf"} <= set(found), found
    assert not any(m.startswith("numpy") for m in found)
    (pkg / "helpers.py").write_text("def scale(x):\n    return 3 * x\n")
    assert code.installed_code("acme_steps.steps", str(pkg / "steps.py"))["acme_steps.helpers"] \
        != found["acme_steps.helpers"]
