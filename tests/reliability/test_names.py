"""Item 5 (issue 8 #7): recipe and target names are checked whole at load time: no trailing
newline slips through (`$`), no name too long for a folder; the error names file:line:col."""

from __future__ import annotations

import pytest
from conftest import FAKE_RECIPE, Project


@pytest.mark.parametrize("replace,expected", [
    (("  a:\n", '  "cpu\\n":\n'), "target name 'cpu\\n' at {f}:6:3 may only hold"),
    (("  a:\n", f"  {'t' * 300}:\n"), "target name '" + "t" * 40 + "...' at {f}:6:3 is 300 characters"),
    (("name: demo", 'name: "demo\\n"'), "recipe name 'demo\\n' at {f}:1:7 may only hold"),
    (("name: demo", f"name: {'n' * 101}"), "recipe name '" + "n" * 40 + "...' at {f}:1:7 is 101 characters"),
    (("name: demo", "name: -demo"), "recipe name '-demo' at {f}:1:7 must start with a letter"),
])
def test_bad_names_fail_at_load_with_a_location(project: Project, capsys, replace: tuple[str, str],
                                                expected: str) -> None:
    f = project.recipe(FAKE_RECIPE.replace(*replace))
    capsys.readouterr()
    assert project.run(str(f)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: " + expected.format(f=f)), err
    assert not project.out.exists()
    assert not (project.cache / "cas").exists() or not list((project.cache / "cas").rglob("*"))


def test_recipe_file_name_too_long_for_a_name(project: Project, capsys) -> None:
    f = project.recipe(FAKE_RECIPE.replace("name: demo\n", ""), "r" * 120 + ".yaml")
    capsys.readouterr()
    assert project.run(str(f)) == 1
    err = capsys.readouterr().err
    assert "is 120 characters long; at most 100 are allowed; set 'name:'" in err


def test_longest_allowed_name_builds(project: Project, capsys) -> None:
    name = "t" * 100
    f = project.recipe(FAKE_RECIPE.replace("  b:\n", f"  {name}:\n"))
    s = project.build_json(f, capsys)
    assert s["rc"] == 0 and (project.out / "demo" / name / "manifest.json").exists()
