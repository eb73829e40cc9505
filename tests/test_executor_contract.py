"""The executor contract, for the local executor and the Ray executor against a real Ray cluster
started on loopback (a head node, and a worker node that offers a custom accelerator resource).

Each test runs real worker processes on the fake steps: a result comes back with its outputs
stored, a failing step is a failed job with its log tail (never retried), a limit kills a task,
cancel stops what runs. On Ray, a task for an accelerator runs on the node that offers it, and a
task that no node can run finishes at once with the reason instead of waiting.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.run.executors.local import Finished, Job, LocalExecutor
from orchestrator.run.worker import TaskSpec

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
ACCELERATOR = "edge-box"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A real two-node Ray cluster on 127.0.0.1 (`ray start --block`, so stopping the test's
    processes stops the nodes; nothing else on the machine is touched)."""
    pytest.importorskip("ray", reason="pip install -e '.[ray]'")
    ray_bin = Path(os.sys.executable).with_name("ray")
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # socket paths must stay short
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    common = ["--block", "--node-ip-address=127.0.0.1", "--object-store-memory=80000000",
              "--disable-usage-stats"]
    head = subprocess.Popen([str(ray_bin), "start", "--head", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", f"--temp-dir={temp}", *common],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    nodes: list[subprocess.Popen[bytes]] = [head]
    try:
        import ray

        deadline = time.monotonic() + 60
        while True:
            try:
                ray.init(address=address, log_to_driver=False, include_dashboard=False,
                         configure_logging=False)
                break
            except (ConnectionError, RuntimeError):
                if time.monotonic() > deadline or head.poll() is not None:
                    raise
                time.sleep(0.5)
        nodes.append(subprocess.Popen(
            [str(ray_bin), "start", f"--address={address}", "--num-cpus=1",
             f"--resources={{\"accelerator:{ACCELERATOR}\": 1}}", *common],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert time.monotonic() < deadline, "the Ray worker node did not join"
            time.sleep(0.3)
        yield address
    finally:
        import ray

        ray.shutdown()
        for p in reversed(nodes):
            p.terminate()
        for p in nodes:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(params=["local", "warm", "ray"])
def executor(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The local executor starting its workers cold (`python -m orchestrator.run.worker`), the same
    forking them from a warm server (every job of the test must be forked), and Ray."""
    if request.param == "local":
        ex: Any = LocalExecutor(jobs=2, warm=False)
    elif request.param == "warm":
        ex = LocalExecutor(jobs=2)
        assert ex.warm_up(("json",)), "the warm server did not come up"
    else:
        from orchestrator.run.executors.ray_cluster import RayExecutor

        ex = RayExecutor(request.getfixturevalue("ray_address"))
    yield ex
    if request.param == "warm":
        assert ex.forked >= 1, "no job of this test was forked from the warm server"
    ex.cancel_all()


def job(tmp_path: Path, cls: str, params: dict[str, Any], *, name: str = "t",
        accelerator: str | None = None, plugin: str = "fake_steps.py", **kw: Any) -> Job:
    model = tmp_path / "model.txt"
    model.write_text("hello")
    scratch = tmp_path / f"scratch-{name}"
    spec = TaskSpec(
        ref={"file": str(FIXTURES / plugin), "class": cls},
        step=cls, params=params, inputs={"model": str(model)}, out_dir=str(scratch / "out"),
        result=str(scratch / "result.json"),
        hardware={"device": "cpu", "accelerator": accelerator},
        model={"task": "feature-extraction", "trust_remote_code": False}, threads=1,
        store=str(tmp_path / "cache"), reference=False)
    return Job(name, spec, scratch, 1, name, **kw)


def wait(ex: Any, n: int = 1, timeout: float = 120) -> list[Finished]:
    got: list[Finished] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} jobs finished"
        ex.enforce_limits()
        got.extend(ex.poll(0.2))
    return got


def test_a_job_runs_and_its_outputs_are_stored(executor: Any, tmp_path: Path) -> None:
    executor.start(job(tmp_path, "Upper", {"suffix": "!"}))
    (fin,) = wait(executor)
    assert fin.ok and fin.returncode == 0, fin.log
    out = fin.result["outputs"]["model"] if fin.result else {}
    from orchestrator.store.local import LocalStore

    store = LocalStore(tmp_path / "cache")
    try:
        assert store.read_bytes(out["digest"]) == b"HELLO!"
    finally:
        store.close()


@pytest.mark.parametrize("how,why", [("raise", "boom on purpose"), ("exit", "")])
def test_a_failing_step_is_a_failed_job_with_its_log(executor: Any, tmp_path: Path, how: str,
                                                     why: str) -> None:
    executor.start(job(tmp_path, "Fail", {"how": how}))
    (fin,) = wait(executor)
    assert not fin.ok and fin.result is None
    assert fin.returncode == (7 if how == "exit" else 1)
    assert "about to fail" in fin.log and why in fin.log
    assert fin.log.count("about to fail") == 1  # a step failure is never retried


def test_a_limit_kills_the_task(executor: Any, tmp_path: Path) -> None:
    executor.start(job(tmp_path, "Fail", {"how": "hang", "seconds": 60}, timeout_s=2,
                       limit_where={"timeout_s": "set at r.yaml:3:4"}))
    t0 = time.monotonic()
    (fin,) = wait(executor)
    assert not fin.ok and fin.reason and fin.reason.startswith("timed out after")
    assert "set at r.yaml:3:4" in fin.reason
    assert time.monotonic() - t0 < 30


def test_cancel_stops_what_runs(executor: Any, tmp_path: Path) -> None:
    executor.start(job(tmp_path, "Fail", {"how": "hang", "seconds": 60}))
    time.sleep(1.0)
    t0 = time.monotonic()
    executor.cancel_all()
    assert time.monotonic() - t0 < 20
    assert executor.running == {} and executor.poll(0.1) == []


def test_an_exclusive_job_runs_alone(executor: Any, tmp_path: Path) -> None:
    assert executor.can_start(1, exclusive=True)
    executor.start(job(tmp_path, "Upper", {"sleep": 1.0}, name="a"))
    assert not executor.can_start(1, exclusive=True)
    wait(executor)


def test_a_task_for_an_accelerator_runs_on_the_node_that_offers_it(ray_address: str,
                                                                   tmp_path: Path) -> None:
    import ray

    from orchestrator.run.executors.ray_cluster import RayExecutor

    ex = RayExecutor(ray_address)
    edge = [n["NodeID"] for n in ray.nodes()
            if n["Alive"] and f"accelerator:{ACCELERATOR}" in n["Resources"]]
    assert len(edge) == 1
    for i in range(3):
        ex.start(job(tmp_path, "Upper", {"suffix": str(i)}, name=f"e{i}", accelerator=ACCELERATOR))
    fins = wait(ex, 3)
    assert all(f.ok for f in fins), [f.log for f in fins]
    assert {ex.ran_on[f.task_id] for f in fins} == set(edge)


def test_a_lost_ray_worker_is_retried_and_the_task_still_builds(ray_address: str,
                                                                 tmp_path: Path) -> None:
    """A node or Ray worker lost under a task is a system failure: Ray runs the task again (a step
    failure, by contrast, is never retried: test_a_failing_step_is_a_failed_job_with_its_log)."""
    from orchestrator.run.executors.ray_cluster import RayExecutor

    ex = RayExecutor(ray_address)
    marker = tmp_path / "attempts.txt"
    try:
        ex.start(job(tmp_path, "LoseWorkerOnce", {"marker": str(marker)}, plugin="ray_steps.py"))
        (fin,) = wait(ex)
    finally:
        ex.cancel_all()
    lines = marker.read_text().splitlines()
    assert fin.ok, (fin.log, lines)
    assert [line.split()[0] for line in lines] == ["lost", "built"], lines
    assert lines[0].split()[-1] != lines[1].split()[-1]  # another Ray worker ran it again


def test_with_a_remote_cache_the_bytes_travel_through_it_not_a_shared_folder(
        ray_address: str, tmp_path: Path) -> None:
    """With a remote cache the build may read and write, a node needs no file system in common
    with the build: the build uploads the task's inputs, the node fetches them into its own
    cache, runs the step, uploads the outputs, and the build downloads them, verified. The build's
    copies of the inputs (and its scratch folder) are deleted once the task is sent: a node that
    read them from the build's folders would fail."""
    from orchestrator.run.executors.ray_cluster import RayExecutor
    from orchestrator.store.remote import Remote
    from orchestrator.store.tiered import TieredStore

    remote_dir = tmp_path / "remote"
    store = TieredStore(tmp_path / "build-cache", Remote(remote_dir.as_uri()))
    ex = RayExecutor(ray_address, store)
    assert ex.portable
    model = tmp_path / "model"  # a folder input: a tree, file by file
    (model / "sub").mkdir(parents=True)
    (model / "a.txt").write_text("hello ")
    (model / "sub" / "b.txt").write_text("world")
    j = job(tmp_path, "Upper", {"suffix": "!"})
    j.spec.inputs["model"] = str(model)
    try:
        ex.start(j)
        shutil.rmtree(model)
        shutil.rmtree(j.scratch)
        (fin,) = wait(ex)
    finally:
        ex.cancel_all()
    try:
        assert fin.ok, (fin.reason, fin.log)
        out = fin.result["outputs"]["model"] if fin.result else {}
        assert store.read_bytes(out["digest"]) == b"HELLO WORLD!"  # fetched into the build's cache
        assert (remote_dir / "cas" / "sha256" / out["digest"][:2] / out["digest"][2:]).is_file()
    finally:
        store.close()


def test_an_input_from_the_cache_is_sent_by_its_known_blob_not_hashed_again(
        ray_address: str, tmp_path: Path) -> None:
    """An input the scheduler placed from the cache comes with its blob (Job.input_blobs): the
    Ray executor sends that blob as it is. Its placed copy does not even exist here: hashing it
    again (a big ONNX file per task) would fail."""
    import dataclasses

    from orchestrator.run.executors.ray_cluster import RayExecutor
    from orchestrator.store.remote import Remote
    from orchestrator.store.tiered import TieredStore

    store = TieredStore(tmp_path / "build-cache", Remote((tmp_path / "remote").as_uri()))
    ex = RayExecutor(ray_address, store)
    blob = store.put_bytes(b"from the cache")
    j = job(tmp_path, "Upper", {"suffix": "?"})
    j.spec.inputs["model"] = str(tmp_path / "never-placed" / "model.txt")
    j = dataclasses.replace(j, input_blobs={"model": {**blob.to_json(), "filename": "model.txt"}})
    try:
        ex.start(j)
        (fin,) = wait(ex)
    finally:
        ex.cancel_all()
    try:
        assert fin.ok, (fin.reason, fin.log)
        out = fin.result["outputs"]["model"] if fin.result else {}
        assert store.read_bytes(out["digest"]) == b"FROM THE CACHE?"
    finally:
        store.close()


def test_a_task_no_node_can_run_finishes_at_once_with_the_reason(ray_address: str,
                                                                 tmp_path: Path) -> None:
    from orchestrator.run.executors.ray_cluster import RayExecutor

    ex = RayExecutor(ray_address)
    t0 = time.monotonic()
    ex.start(job(tmp_path, "Upper", {}, accelerator="jetson-orin"))
    ex.start(job(tmp_path, "Upper", {}, name="g", cuda=1))
    fins = {f.task_id: f for f in wait(ex, 2, timeout=10)}
    assert time.monotonic() - t0 < 5
    assert "no node of the Ray cluster offers accelerator:jetson-orin" in (fins["t"].reason or "")
    assert "GPU 1" in (fins["g"].reason or "")
    assert not fins["t"].ok and ex.running == {}


def test_a_build_on_the_ray_cluster_matches_a_local_build(ray_address: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`deploy-build --executor ray --ray-address ADDR`: the same tasks run, the same manifests
    (byte for byte) as a local build; a second build on the cluster is all hits."""
    from conftest import FAKE_RECIPE, Project

    recipe = FAKE_RECIPE.replace("  b:\n", f"  b:\n    hardware: {{accelerator: {ACCELERATOR}}}\n")
    builds = {}
    for where in ("local", "ray"):
        (tmp_path / where).mkdir()
        project = Project(tmp_path / where)
        r = project.recipe(recipe)
        extra = ("--executor", "ray", "--ray-address", ray_address) if where == "ray" else ()
        s = project.build_json(r, capsys, *extra)
        assert s["rc"] == 0, s["err"]
        assert {t["status"] for t in s["tasks"]} == {"run"}
        builds[where] = project
    for target in ("a", "b"):
        local, ray_ = (builds[w].out / "demo" / target / "manifest.json" for w in ("local", "ray"))
        assert local.read_bytes() == ray_.read_bytes()
    again = builds["ray"].build_json(builds["ray"].root / "r.yaml", capsys, "--executor", "ray",
                                     "--ray-address", ray_address)
    assert {t["status"] for t in again["tasks"]} == {"hit"}


def test_what_the_cluster_builds_reaches_another_machine_through_the_remote_cache(
        ray_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A nightly on the Ray cluster with a remote cache (a shared folder here); a machine with an
    empty cache and no cluster then takes every task from the remote, manifests byte-identical."""
    from conftest import FAKE_RECIPE, Project

    url = (tmp_path / "remote").as_uri()
    recipe = FAKE_RECIPE.replace("  b:\n", f"  b:\n    hardware: {{accelerator: {ACCELERATOR}}}\n")
    builds = {}
    for where, extra in (("cluster", ("--executor", "ray", "--ray-address", ray_address)),
                         ("laptop", ("--remote-cache-mode", "read"))):
        (tmp_path / where).mkdir()
        project = Project(tmp_path / where)
        builds[where] = project.build_json(project.recipe(recipe), capsys, "--remote-cache", url,
                                           *extra)
        assert builds[where]["rc"] == 0, builds[where]["err"]
    assert {t["status"] for t in builds["cluster"]["tasks"]} == {"run"}
    assert {t["status"] for t in builds["laptop"]["tasks"]} == {"hit"}
    for target in ("a", "b"):
        one, two = (tmp_path / w / "build" / "demo" / target / "manifest.json"
                    for w in ("cluster", "laptop"))
        assert one.read_bytes() == two.read_bytes()


def test_on_the_cluster_a_target_no_node_can_run_is_skipped_with_the_reason(
        ray_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With --executor ray a target's hardware is judged by the cluster's nodes: one whose
    accelerator no node offers, or a cuda target on a cluster without GPUs, is skipped at once
    with the reason (exit 0; 2 with --require-all); one the edge node offers builds."""
    from conftest import FAKE_RECIPE, Project

    recipe = FAKE_RECIPE.replace("  b:\n", "  b:\n    hardware: {accelerator: jetson-orin}\n")
    recipe += (f"  c:\n    hardware: {{accelerator: {ACCELERATOR}}}\n    steps:\n"
               "      - fake-upper: {suffix: c}\n"
               "  d:\n    hardware: {device: cuda}\n    steps:\n      - fake-upper: {suffix: d}\n")
    project = Project(tmp_path)
    r = project.recipe(recipe)
    flags = ("--executor", "ray", "--ray-address", ray_address)
    s = project.build_json(r, capsys, *flags)
    assert s["rc"] == 0, s["err"]
    targets = s["targets"]
    assert targets["demo/a"]["status"] == "ok" and targets["demo/c"]["status"] == "ok"
    assert targets["demo/b"]["status"] == "skipped"
    assert "no node of the Ray cluster offers accelerator:jetson-orin" in targets["demo/b"]["reason"]
    assert targets["demo/d"]["status"] == "skipped"
    assert "no node of the Ray cluster offers GPU 1" in targets["demo/d"]["reason"]
    assert project.build_json(r, capsys, *flags, "--require-all")["rc"] == 2
