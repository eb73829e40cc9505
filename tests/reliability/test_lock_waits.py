"""Issue 17, "Locks that never hang": the suite keeps its own lock folder, so it passes beside a
real benchmarking build of the same user; a waiting build names who it waits for and since when;
--lock-timeout ends the wait with that message; an in-process task takes the machine lock too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Project
from helpers import REPO, cli_env, communicate, kill_tree, popen_cli, wait_for

BENCH_STEP = '''\
"""An exclusive check that holds the machine for $BENCH_SLEEP seconds, as a long benchmark does."""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator.step import Step, StepContext


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tag: str = ""


class LongBench(Step):
    name = "long-bench"
    version = "1"
    kind = "check"
    exclusive = True
    Params = Params
    input_formats = {"model": ("any",)}

    def run(self, ctx: StepContext) -> dict[str, Any]:
        time.sleep(float(os.environ.get("BENCH_SLEEP", "600")))
        return {"ms": 1.0}
'''

BENCH_RECIPE = """\
name: {name}
plugins: [fake_steps.py, bench_step.py]
model:
  source: ./model
targets:
  a:
    steps:
      - fake-upper: {{suffix: "{name}"}}
    checks:
      long-bench: {{tag: {name}}}
"""


def _benchmarking(project: Project, name: str, env: dict[str, str], lock_folder: Path
                  ) -> subprocess.Popen[str]:
    """Start a build whose benchmark holds the machine lock of lock_folder; return once it does."""
    from orchestrator.store.locks import MACHINE_LOCK, try_lock

    (project.root / "bench_step.py").write_text(BENCH_STEP)
    r = project.recipe(BENCH_RECIPE.format(name=name), f"{name}.yaml")
    proc = popen_cli(str(r), "--cache", str(project.root / f"cache-{name}"), "--out",
                     str(project.root / f"out-{name}"), env=env, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)

    def held() -> bool:
        if not (lock_folder / MACHINE_LOCK).exists() or proc.poll() is not None:
            return False
        fd = try_lock(lock_folder / MACHINE_LOCK, exclusive=False)
        if fd is None:
            return True
        os.close(fd)
        return False

    assert wait_for(held, 60), "the benchmarking build never took the machine lock"
    return proc


def test_the_lock_sensitive_tests_pass_beside_a_real_benchmarking_build(
        project: Project, tmp_path: Path) -> None:
    """The hang of December 7, reproduced: another build of this user benchmarks in the
    machine-wide lock folder (here XDG_RUNTIME_DIR/deploy-build of a scratch XDG_RUNTIME_DIR, the
    folder a build uses when DEPLOY_BUILD_LOCK_DIR is unset) while the lock-sensitive tests run in
    another pytest. Without a private lock folder per test, their builds wait for it forever."""
    run = tmp_path / "xdg-run"
    run.mkdir(mode=0o700)
    env = {k: v for k, v in cli_env().items()
           if k not in ("DEPLOY_BUILD_LOCK_DIR", "DEPLOY_BUILD_LOCK_TIMEOUT")}
    env.update(XDG_RUNTIME_DIR=str(run), BENCH_SLEEP="600")
    holder = _benchmarking(project, "other", env, run / "deploy-build")
    inner = subprocess.Popen(  # its own session: on a hang, it and every build it started go
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         "tests/reliability/test_concurrent_builds.py", "-k",  # the ones that lock the machine
         "benchmark or failed_in_the_other or waits_for_a_locked or key_lock"], cwd=REPO,
        env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = inner.communicate(timeout=240)
        still_benchmarking = holder.poll() is None  # it held the machine all along
    except subprocess.TimeoutExpired:
        os.killpg(inner.pid, signal.SIGKILL)
        out, _ = inner.communicate(timeout=30)
        pytest.fail(f"the tests hung beside a benchmarking build:\n{out[-3000:]}")
    finally:
        kill_tree(holder.pid)
    assert inner.returncode == 0, out[-3000:]
    assert still_benchmarking


def test_a_waiting_build_names_the_holder_and_gives_up_at_its_lock_timeout(
        project: Project, private_lock_folder: Path) -> None:
    env = {**cli_env(), "BENCH_SLEEP": "600"}
    env.pop("DEPLOY_BUILD_LOCK_TIMEOUT", None)
    holder = _benchmarking(project, "one", env, private_lock_folder)
    second = project.recipe(FAKE_TWO, "two.yaml")
    t0 = time.monotonic()
    proc = popen_cli(str(second), "--cache", str(project.cache), "--out", str(project.out),
                     "--lock-timeout", "2", "--json", env=env, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
    out, err = communicate(proc, timeout=60)
    assert proc.returncode == 2, err
    assert time.monotonic() - t0 < 30
    # the wait names the holder: its pid, its command, what it runs, since when
    wait = next(x for x in err.splitlines() if x.startswith("WAIT  a/1:fake-upper"))
    assert f"pid {holder.pid}" in wait and "one.yaml" in wait, wait
    assert "benchmarking a/check:long-bench" in wait and " since " in wait, wait
    task = json.loads(out)["tasks"][0]
    assert task["status"] == "fail"
    assert "gave up after waiting" in task["error"] and "--lock-timeout 2" in task["error"]
    assert f"pid {holder.pid}" in task["error"]
    kill_tree(holder.pid)
    holder.communicate(timeout=10)
    again = popen_cli(str(second), "--cache", str(project.cache), "--out", str(project.out),
                      "--lock-timeout", "2", env=env, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE)
    _, err = communicate(again, timeout=60)  # a killed holder's lock went with it
    assert again.returncode == 0, err


def test_an_in_process_benchmark_takes_the_machine_lock(
        project: Project, private_lock_folder: Path) -> None:
    env = {**cli_env(), "BENCH_SLEEP": "600"}
    holder = _benchmarking(project, "one", env, private_lock_folder)
    (project.root / "bench_step.py").write_text(BENCH_STEP)
    r = project.recipe(BENCH_RECIPE.format(name="mine"), "mine.yaml")
    up = popen_cli(str(r), "--cache", str(project.cache), "--out", str(project.out), "--only",
                   "a/1:fake-upper", "--lock-timeout", "1", env=env, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE)
    _, err = communicate(up, timeout=60)
    assert up.returncode == 2 and "gave up after waiting" in err, err  # even a step waits
    kill_tree(holder.pid)
    holder.communicate(timeout=10)
    built = popen_cli(str(r), "--cache", str(project.cache), "--out", str(project.out), "--only",
                      "a/1:fake-upper", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert communicate(built, timeout=60) and built.returncode == 0
    holder = _benchmarking(project, "two", env, private_lock_folder)
    env["BENCH_SLEEP"] = "0"
    proc = popen_cli(str(r), "--cache", str(project.cache), "--out", str(project.out), "--only",
                     "a/check:long-bench", "--in-process", "--lock-timeout", "1", env=env,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = communicate(proc, timeout=60)
    assert proc.returncode == 2, err
    assert "gave up after waiting" in err and f"pid {holder.pid}" in err, err
    kill_tree(holder.pid)
    holder.communicate(timeout=10)
    proc = popen_cli(str(r), "--cache", str(project.cache), "--out", str(project.out), "--only",
                     "a/check:long-bench", "--in-process", env=env, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
    out, err = communicate(proc, timeout=60)
    assert proc.returncode == 0 and json.loads(out)["metrics"] == {"ms": 1.0}, err


def test_locks_are_released_however_the_block_ends(tmp_path: Path) -> None:
    from orchestrator.store.locks import MACHINE_LOCK, BuildLocks, try_lock

    with pytest.raises(RuntimeError), BuildLocks(tmp_path) as locks:
        assert locks.lock_machine("bench", exclusive=True, label="a/check:benchmark")
        assert locks.lock_key("t", "k" * 64, "a/1:step")
        raise RuntimeError("an assertion that failed while the locks were held")
    fd = try_lock(Path(os.environ["DEPLOY_BUILD_LOCK_DIR"]) / MACHINE_LOCK, exclusive=True)
    assert fd is not None
    os.close(fd)
    assert not list((Path(os.environ["DEPLOY_BUILD_LOCK_DIR"]) / "holders").glob("*.json"))


def test_holders_are_read_from_proc_locks_and_the_records(tmp_path: Path) -> None:
    """Pure parts: /proc/locks lines for the lock's inode (other files and blocked waiters are
    not holders); a record of a dead process is stale and removed."""
    from orchestrator.store.locks import MACHINE_LOCK, Holder, describe_holders, machine_holders

    (tmp_path / MACHINE_LOCK).write_text("")
    st = os.stat(tmp_path / MACHINE_LOCK)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    me = os.getppid()  # alive, and not this process
    text = (f"1: FLOCK  ADVISORY  WRITE {me} {dev}:{st.st_ino} 0 EOF\n"
            f"1: -> FLOCK  ADVISORY  READ 777 {dev}:{st.st_ino} 0 EOF\n"
            f"2: FLOCK  ADVISORY  READ 778 {dev}:{st.st_ino + 1} 0 EOF\n")
    (tmp_path / "holders").mkdir()
    (tmp_path / "holders" / f"{me}.json").write_text(json.dumps(
        {"pid": me, "command": "deploy-build recipes/x.yaml", "since": 1000.0,
         "tasks": ["x/a/check:benchmark"], "mode": "exclusive"}))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / "holders" / f"{dead}.json").write_text(json.dumps({"pid": int(dead)}))
    holders = machine_holders(tmp_path, text)
    assert holders == [Holder(me, "deploy-build recipes/x.yaml", ("x/a/check:benchmark",), 1000.0,
                              "exclusive")]
    assert not (tmp_path / "holders" / f"{dead}.json").exists()
    words = describe_holders(holders, now=1000.0 + 250)
    assert words.startswith(f"held by pid {me} (deploy-build recipes/x.yaml; benchmarking "
                            "x/a/check:benchmark) since ") and words.endswith("4 min ago"), words


def test_a_lock_timeout_must_be_positive(project: Project, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    r = project.recipe(FAKE_TWO)
    assert project.run(str(r), "--lock-timeout", "0") == 1
    assert "--lock-timeout must be a positive number" in capsys.readouterr().err


FAKE_TWO = """\
name: two
plugins: [fake_steps.py]
model:
  source: ./model
targets:
  a:
    steps:
      - fake-upper: {suffix: "2"}
"""
