"""examples/ci/: the GitHub Actions workflows parse, and every deploy-build command they run
exists and parses with this version's command line (globs resolve to real recipes)."""

from __future__ import annotations

import glob
import re
import shlex
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import COMMANDS, parser

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "examples" / "ci").glob("*.yml"))


def commands(workflow: Path) -> list[list[str]]:
    doc = yaml.safe_load(workflow.read_text())
    assert doc["jobs"] and (doc.get("on") or doc.get(True))  # yaml reads a bare `on` as True
    out = []
    for job in doc["jobs"].values():
        for step in job["steps"]:
            assert "uses" in step or "run" in step, step
            for line in str(step.get("run", "")).splitlines():
                line = re.sub(r"\$\{\{[^}]*\}\}", "main", line).strip()
                if line.startswith("deploy-build "):
                    words = shlex.split(line)
                    out.append(words[1:words.index(">")] if ">" in words else words[1:])
    return out


def test_there_is_a_nightly_and_a_pull_request_workflow() -> None:
    assert [w.name for w in WORKFLOWS] == ["nightly.yml", "pull-request.yml"]
    runs = {w.name: [c[0] for c in commands(w)] for w in WORKFLOWS}
    assert "report" in runs["nightly.yml"] and "diff" in runs["pull-request.yml"]


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_commands_parse(workflow: Path) -> None:
    found = commands(workflow)
    assert found
    for words in found:
        if words[0] not in COMMANDS:
            words = ["build", *words]
        args = parser().parse_args(words)  # a bad flag exits (SystemExit): the test fails
        assert args.func
        for spec in getattr(args, "recipes", []):
            assert glob.glob(str(ROOT / spec)), f"{spec} matches no recipe in the repository"
        if args.command == "diff":
            from orchestrator.commands.diff import GROWTH, RULE

            assert all(RULE.match(r) or GROWTH.match(r) for r in args.fail_on), args.fail_on
