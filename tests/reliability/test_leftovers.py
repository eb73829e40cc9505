"""Issue 18, item 8: after Ctrl-C or SIGTERM nothing a command wrote for itself outlives it: probe
files in target folders, half-written staging folders, run_step's temporary folders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAKE_RECIPE, Project

from orchestrator.cli import main


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.name.startswith(".probe-") or ".new-" in p.name or ".old-" in p.name)


def test_sigterm_while_probing_the_output_folder_leaves_no_probe_file(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM used to kill the command outright before the build started (its handler was set
    only around the build), so a probe file being written stayed in the target folder for good.
    Now SIGTERM unwinds the whole command like Ctrl-C."""
    import tempfile
    from types import SimpleNamespace

    from orchestrator.host import diskerrors

    real = tempfile.mkstemp

    def mkstemp_then_sigterm(*args: object, **kw: object) -> tuple[int, str]:
        made = real(*args, **kw)  # type: ignore[call-overload]
        os.kill(os.getpid(), signal.SIGTERM)  # arrives right after the probe file exists
        return made  # type: ignore[no-any-return]

    monkeypatch.setattr(diskerrors, "tempfile", SimpleNamespace(mkstemp=mkstemp_then_sigterm))
    assert main([str(project.recipe(FAKE_RECIPE)), "--cache", str(project.cache), "--out",
                 str(project.out)]) == 143
    monkeypatch.undo()
    assert _leftovers(project.root) == []


def test_a_probe_file_of_a_killed_command_is_swept(project: Project, capsys) -> None:
    (project.out / "demo" / "a").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (project.out / "demo" / "a" / f".probe-{dead}-abc").write_text("x")
    assert project.run(str(project.recipe(FAKE_RECIPE))) == 0
    assert _leftovers(project.root) == []


def test_a_second_interrupt_while_cleaning_up_a_staging_folder_waits(
        project: Project, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Ctrl-C while a target folder is staged removes the staging folder; a second Ctrl-C
    during that removal no longer stops it half way."""
    from orchestrator.targets import materialize as manifest

    real = manifest._remove_tree
    calls = {"n": 0}

    real_materialize = manifest.LocalStore.materialize

    def interrupted_materialize(self: object, blob: object, dest: Path) -> None:
        if ".new-" in str(dest):
            raise KeyboardInterrupt  # Ctrl-C while the target's files are placed
        real_materialize(self, blob, dest)  # type: ignore[arg-type]

    def remove_with_a_second_ctrl_c(path: Path) -> None:
        calls["n"] += 1
        if ".new-" in path.name and path.exists():
            os.kill(os.getpid(), signal.SIGINT)  # held until the removal is done
        real(path)

    monkeypatch.setattr(manifest, "_remove_tree", remove_with_a_second_ctrl_c)
    monkeypatch.setattr(manifest.LocalStore, "materialize", interrupted_materialize)
    rc = project.run(str(project.recipe(FAKE_RECIPE)))
    monkeypatch.undo()
    assert rc in (130, 143) and calls["n"] >= 1
    assert _leftovers(project.root) == []


def test_run_step_folders_go_when_the_process_ends(tmp_path: Path) -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from pathlib import Path\n"
        "import fake_steps\n"
        "from orchestrator.testing import run_step\n"
        "src = Path(sys.argv[2]); src.write_text('abc')\n"
        "run = run_step(fake_steps.Upper, {}, {'model': src})\n"
        "assert run.outputs['model'].read_text() == 'ABC'\n"
        "print(run.out_dir)\n")
    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    done = subprocess.run([sys.executable, "-c", code, str(fixtures), str(tmp_path / "m.txt")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip())
    assert folder.name.startswith("run-step-fake-upper-") and not folder.exists()
