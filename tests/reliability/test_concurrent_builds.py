"""Issue 8, part II, item 3 ("Two builds on one cache"): two builds on one cache build each task
once (a lock per action key), and a benchmark (an exclusive step) never runs beside another task,
of its build or of another."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from conftest import Project
from helpers import children, communicate, popen_cli, run_cli, wait_for

SHARED = """\
name: shared
plugins: [fake_steps.py]
model:
  source: ./model
targets:
  a:
    steps:
      - fake-upper: {suffix: "a", sleep: 0.6}
      - fake-tree: {files: 2}
    checks:
      fake-length: {max_bytes: 1000}
  b:
    steps:
      - fake-upper: {suffix: "b", sleep: 0.6}
      - fake-const: {text: hello}
  c:
    steps:
      - fake-upper: {suffix: "c", sleep: 0.6}
"""

TIMED_STEPS = '''\
"""Steps that record when they ran (wall clock) into $TIMES_FILE; fake-bench is exclusive."""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator.step import Step, StepContext


class TimedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tag: str = ""
    sleep: float = 0.4


def _record(what: str, start: float) -> None:
    line = f"{what} {os.getpid()} {start!r} {time.time()!r}\\n".encode()
    fd = os.open(os.environ["TIMES_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class Timed(Step):
    name = "fake-timed"
    version = "1"
    Params = TimedParams
    outputs = {"model": "model.txt"}
    input_formats = {"model": ("any",)}
    output_formats = {"model": "text"}

    def run(self, ctx: StepContext) -> dict[str, Any]:
        start = time.time()
        time.sleep(ctx.params.sleep)
        ctx.output("model").write_text(ctx.params.tag)
        _record("task", start)
        return {}


class Flaky(Step):
    name = "fake-flaky"
    version = "1"
    Params = TimedParams
    outputs = {"model": "model.txt"}
    input_formats = {"model": ("any",)}
    output_formats = {"model": "text"}

    def run(self, ctx: StepContext) -> dict[str, Any]:
        time.sleep(ctx.params.sleep)
        if os.environ.get("FLAKY_FAIL"):
            raise RuntimeError("failed on purpose")
        ctx.output("model").write_text("ok")
        return {}


class Bench(Step):
    name = "fake-bench"
    version = "1"
    kind = "check"
    exclusive = True
    Params = TimedParams
    input_formats = {"model": ("any",)}

    def run(self, ctx: StepContext) -> dict[str, Any]:
        start = time.time()
        time.sleep(ctx.params.sleep)
        _record("bench", start)
        return {"ms": 1.0}
'''


def _timed_recipe(name: str) -> str:
    targets = "".join(
        f"  {t}:\n    steps:\n      - fake-timed: {{tag: {name}-{t}}}\n"
        + (f"    checks:\n      fake-bench: {{tag: {name}-{t}}}\n" if t in "ab" else "")
        for t in "abcd")
    return (f"name: {name}\nplugins: [timed_steps.py]\nmodel:\n  source: ./model\n"
            f"targets:\n{targets}")


def _start(project: Project, recipe: Path, out: str, *args: str) -> subprocess.Popen[str]:
    return popen_cli(str(recipe), "--cache", str(project.cache), "--out", str(project.root / out),
                     "--json", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _summary(proc: subprocess.Popen[str]) -> dict:
    out, err = communicate(proc, timeout=60)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    summary["err"] = err
    return summary


def test_two_builds_at_once_run_each_task_once_and_agree(project: Project) -> None:
    r = project.recipe(SHARED)
    procs = [_start(project, r, f"out{i}", "--jobs", "4") for i in range(2)]
    first, second = (_summary(p) for p in procs)
    labels = [t["label"] for t in first["tasks"]]
    assert labels == [t["label"] for t in second["tasks"]] and len(labels) == 6
    for label in labels:
        statuses = sorted(s["status"] for b in (first, second) for s in b["tasks"]
                          if s["label"] == label)
        assert statuses == ["hit", "run"], f"{label}: {statuses}"  # run once, across both builds
    reasons = {r for b in (first, second) for t in b["tasks"] if t["status"] == "hit"
               for r in t["reasons"]}  # hits found when planning have none
    assert reasons <= {"built by another build meanwhile"}, reasons
    for target in ("a", "b", "c"):
        one = (project.root / f"out0/shared/{target}/manifest.json").read_text()
        two = (project.root / f"out1/shared/{target}/manifest.json").read_text()
        assert one == two
    assert not list((project.cache / "locks" / "ac").iterdir())  # lock files do not pile up


def test_a_benchmark_never_runs_beside_another_task(project: Project,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (project.root / "timed_steps.py").write_text(TIMED_STEPS)
    times = project.root / "times.txt"
    monkeypatch.setenv("TIMES_FILE", str(times))
    recipes = [project.recipe(_timed_recipe(n), f"{n}.yaml") for n in ("one", "two")]
    procs = [_start(project, r, f"out{i}", "--jobs", "4") for i, r in enumerate(recipes)]
    for p in procs:
        s = _summary(p)
        assert {t["status"] for t in s["tasks"]} == {"run"}  # different keys: both build all
    rows = [line.split() for line in times.read_text().splitlines()]
    spans = [(what, int(pid), float(a), float(b)) for what, pid, a, b in rows]
    assert sum(w == "bench" for w, *_ in spans) == 4 and sum(w == "task" for w, *_ in spans) == 8
    for what, pid, start, end in spans:
        if what != "bench":
            continue
        beside = [s for s in spans if s[1] != pid and s[2] < end and start < s[3]]
        assert not beside, f"a benchmark ran beside {beside}"


SLOW = """\
name: slow
plugins: [fake_steps.py]
model:
  source: ./model
targets:
  a:
    steps:
      - fake-upper: {sleep: 2}
"""


def test_a_killed_builds_key_lock_goes_with_it(project: Project) -> None:
    slow = project.recipe(SLOW, "slow.yaml")
    args = (str(slow), "--cache", str(project.cache), "--out", str(project.out))
    proc = popen_cli(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: children(proc.pid), 30), "the build started no worker"
        assert wait_for(lambda: list(project.cache.glob("locks/ac/*.lock")), 30)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    done = run_cli(*args, "--json", timeout=30)  # the same task: its lock died with the build
    assert done.returncode == 0, done.stderr
    assert [t["status"] for t in json.loads(done.stdout)["tasks"]] == ["run"]


def test_a_build_waits_for_a_locked_task_and_runs_others_meanwhile(project: Project) -> None:
    slow = project.recipe(SLOW, "slow.yaml")
    both = project.recipe(SLOW + "  b:\n    steps:\n      - fake-upper: {suffix: b}\n", "both.yaml")
    first = _start(project, slow, "out0")
    assert wait_for(lambda: list(project.cache.glob("locks/ac/*.lock")), 30)  # a/1 is running
    second = _summary(_start(project, both, "out1"))
    assert _summary(first)["tasks"][0]["status"] == "run"
    by_label = {t["label"]: t for t in second["tasks"]}
    assert by_label["a/1:fake-upper"]["status"] == "hit"
    assert by_label["a/1:fake-upper"]["reasons"] == ["built by another build meanwhile"]
    assert by_label["b/1:fake-upper"]["status"] == "run"
    lines = second["err"].splitlines()  # b ran while a waited for the other build
    done_b = next(i for i, x in enumerate(lines) if x.startswith("done  b/1:fake-upper"))
    hit_a = next(i for i, x in enumerate(lines) if x.startswith("HIT   a/1:fake-upper"))
    assert done_b < hit_a, lines
    assert any(x.startswith("WAIT  a/1:fake-upper  (another build is running it") for x in lines)


def test_a_waiting_benchmark_is_not_starved_by_other_builds_tasks(tmp_path: Path) -> None:
    from orchestrator.store.locks import BuildLocks

    # three builds (fds) on one cache; whatever fails below, their locks go with the block
    with BuildLocks(tmp_path) as one, BuildLocks(tmp_path) as two, BuildLocks(tmp_path) as three:
        assert one.lock_machine("task", exclusive=False)
        assert not two.lock_machine("bench", exclusive=True)  # a task runs: the benchmark waits...
        assert not three.lock_machine("other", exclusive=False)  # ...and no new task starts
        one.release("task")
        assert two.lock_machine("bench", exclusive=True)
        assert not three.lock_machine("other", exclusive=False)  # nothing beside the benchmark
        two.release("bench")
        assert three.lock_machine("other", exclusive=False)


def test_a_key_lock_is_exclusive_and_its_file_goes_with_it(tmp_path: Path) -> None:
    from orchestrator.store.locks import BuildLocks

    with BuildLocks(tmp_path) as one, BuildLocks(tmp_path) as two:
        assert one.lock_key("t", "k" * 64)
        assert not two.lock_key("t", "k" * 64)
        one.release("t")
        assert not list((tmp_path / "locks" / "ac").iterdir())
        assert two.lock_key("t", "k" * 64)


def test_the_executor_starts_an_exclusive_job_alone() -> None:
    from orchestrator.run.executors.local import Job, LocalExecutor

    ex = LocalExecutor(8)
    assert ex.can_start(1, exclusive=True)  # nothing runs
    ex.running["bench"] = cast(Any, SimpleNamespace(cpu=1, job=Job("bench", {}, Path("."), 1,
                                                             exclusive=True)))
    assert not ex.can_start(1)  # nothing beside it, though cpu tokens are free
    ex.running = {"t": cast(Any, SimpleNamespace(job=Job("t", {}, Path("."), 1), cpu=1))}
    assert not ex.can_start(1, exclusive=True)  # it waits for the others to finish
    assert ex.can_start(1)


def test_a_task_that_failed_in_the_other_build_runs_here(project: Project,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (project.root / "timed_steps.py").write_text(TIMED_STEPS)
    monkeypatch.setenv("TIMES_FILE", str(project.root / "times.txt"))
    r = project.recipe("name: f\nplugins: [timed_steps.py]\nmodel:\n  source: ./model\n"
                       "targets:\n  a:\n    steps:\n      - fake-flaky: {sleep: 3}\n")
    monkeypatch.setenv("FLAKY_FAIL", "1")
    failing = _start(project, r, "out0")
    assert wait_for(lambda: list(project.cache.glob("locks/ac/*.lock")), 30)
    monkeypatch.delenv("FLAKY_FAIL")
    second = _start(project, r, "out1")
    communicate(failing, timeout=60)
    assert failing.returncode != 0
    s = _summary(second)
    assert [t["status"] for t in s["tasks"]] == ["run"]
    assert "WAIT  a/1:fake-flaky" in s["err"]


def test_the_machine_lock_folder_is_per_user_and_never_a_planted_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.store.locks import lock_dir

    cache = tmp_path / "cache"
    monkeypatch.delenv("DEPLOY_BUILD_LOCK_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    assert lock_dir(cache) == tmp_path / "run" / "deploy-build"  # one folder for all caches
    assert (tmp_path / "run" / "deploy-build").stat().st_mode & 0o777 == 0o700
    (tmp_path / "run" / "deploy-build").rmdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run" / "deploy-build").symlink_to(tmp_path / "elsewhere")
    assert lock_dir(cache) == cache / "locks"  # a planted link is not followed
    (tmp_path / "run" / "deploy-build").unlink()
    (tmp_path / "run" / "deploy-build").mkdir(mode=0o777)
    os.chmod(tmp_path / "run" / "deploy-build", 0o777)
    assert lock_dir(cache) == cache / "locks"  # writable by others: not trusted
    monkeypatch.setenv("DEPLOY_BUILD_LOCK_DIR", str(tmp_path / "mine"))
    assert lock_dir(cache) == tmp_path / "mine"
