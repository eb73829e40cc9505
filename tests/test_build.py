"""The engine end to end on fake steps: plan reasons, merging, early cutoff, failures, manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FAKE_RECIPE, Project


def test_first_build_runs_everything_and_shares_the_common_task(project: Project, capsys) -> None:
    s = project.build_json(project.recipe(FAKE_RECIPE), capsys)
    assert s["rc"] == 0
    # fake-upper is used by both targets with the same params and input: one task, run once
    assert [t["label"] for t in s["tasks"]] == [
        "a/1:fake-upper", "a/2:fake-tree", "a/check:fake-length", "b/2:fake-const"]
    assert all(t["status"] == "run" for t in s["tasks"])
    assert s["by_label"]["a/1:fake-upper"]["reasons"] == ["new"]
    for target in ("a", "b"):
        assert s["targets"][f"demo/{target}"]["status"] == "ok"
    assert (project.out / "demo/a/ir/part0.bin").read_bytes().endswith(b"!\x00")
    assert (project.out / "demo/b/model.txt").read_text() == "hello"


def test_noop_build_is_all_hits_and_manifest_is_byte_identical(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    project.build_json(r, capsys)
    m1 = (project.out / "demo/a/manifest.json").read_bytes()
    s = project.build_json(r, capsys)
    assert {t["status"] for t in s["tasks"]} == {"hit"}
    assert (project.out / "demo/a/manifest.json").read_bytes() == m1
    manifest = json.loads(m1)
    assert manifest["status"] == "ok"
    assert manifest["checks"]["fake-length"]["passed"] is True
    assert m1.endswith(b"}\n") and json.dumps(manifest, sort_keys=True, indent=2) + "\n" == m1.decode()
    text = m1.decode()
    for volatile in ("duration", "hit", "host", str(project.root)):
        assert volatile not in text


def test_materialized_outputs_are_hard_links_into_the_cache(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    project.build_json(r, capsys)
    f = project.out / "demo/b/model.txt"
    assert f.stat().st_nlink >= 2  # linked, not copied
    part = project.out / "demo/a/ir/part0.bin"
    before = part.stat().st_ino, part.stat().st_mtime_ns
    project.build_json(r, capsys)  # a no-op leaves folder outputs in place (no delete + relink)
    assert (part.stat().st_ino, part.stat().st_mtime_ns) == before
    # a deleted output comes back; a stray file in an output folder goes
    part.unlink()
    (project.out / "demo/a/ir/stray.bin").write_text("x")
    s = project.build_json(r, capsys)
    assert {t["status"] for t in s["tasks"]} == {"hit"}
    assert part.exists() and not (project.out / "demo/a/ir/stray.bin").exists()


def test_param_change_reruns_only_that_task_with_reason(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    project.build_json(r, capsys)
    project.recipe(FAKE_RECIPE.replace("fake-tree: {files: 2}", "fake-tree: {files: 3}"))
    capsys.readouterr()
    assert project.run(str(r), "--dry-run") == 0
    plan = capsys.readouterr().out
    assert "RUN   a/2:fake-tree  (param changed: files 2 -> 3)" in plan
    assert "HIT   a/1:fake-upper" in plan
    s = project.build_json(r, capsys)
    status = {k: v["status"] for k, v in s["by_label"].items()}
    assert status == {"a/1:fake-upper": "hit", "a/2:fake-tree": "run",
                      "a/check:fake-length": "run", "b/2:fake-const": "hit"}


def test_reasons_below_a_running_task_name_their_own_changes(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    project.build_json(r, capsys)
    project.recipe(FAKE_RECIPE.replace('suffix: "!"', 'suffix: "?"').replace("files: 2", "files: 4"))
    capsys.readouterr()
    project.run(str(r), "--dry-run")
    plan = capsys.readouterr().out
    assert ("RUN   a/2:fake-tree  (param changed: files 2 -> 4; input changes: upstream "
            "a/1:fake-upper runs first") in plan
    project.run(str(r), "--dry-run", "--force")
    assert "RUN   a/2:fake-tree  (forced; input changes:" in capsys.readouterr().out


def test_source_change_is_an_input_change(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    project.build_json(r, capsys)
    (project.root / "model/weights.bin").write_bytes(b"weights-v2")
    capsys.readouterr()
    project.run(str(r), "--dry-run")
    plan = capsys.readouterr().out
    assert "RUN   a/1:fake-upper  (input changed: model)" in plan


def test_early_cutoff(project: Project, capsys) -> None:
    recipe = FAKE_RECIPE.replace("fake-const: {text: hello}",
                                 "fake-const: {text: hello}\n      - fake-upper: {suffix: '?'}")
    r = project.recipe(recipe)
    project.build_json(r, capsys)
    # salt changes fake-const's key but not its bytes: the step downstream of it is a hit
    project.recipe(recipe.replace("fake-const: {text: hello}", "fake-const: {text: hello, salt: 1}"))
    s = project.build_json(r, capsys)
    assert s["by_label"]["b/2:fake-const"]["status"] == "run"
    after = s["by_label"]["b/3:fake-upper"]
    assert after["status"] == "hit"
    assert after["reasons"] == ["early cutoff: upstream rebuilt identical bytes"]


def test_force_reruns(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    project.build_json(r, capsys)
    s = project.build_json(r, capsys, "--force")
    assert {t["status"] for t in s["tasks"]} == {"run"}
    assert s["by_label"]["a/1:fake-upper"]["reasons"] == ["forced"]


def test_target_filter_and_explain(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    s = project.build_json(r, capsys, "-t", "b")
    assert [t["label"] for t in s["tasks"]] == ["b/1:fake-upper", "b/2:fake-const"]
    capsys.readouterr()
    assert project.run("explain", str(r), "-t", "a") == 0
    out = capsys.readouterr().out
    assert "demo/a:" in out and "demo/b:" not in out and "HIT   a/1:fake-upper" in out
    assert "RUN   a/2:fake-tree" in out and "- new" in out
    assert project.run("explain", str(r)) == 0
    assert "[shared by a, b]" in capsys.readouterr().out
    assert project.run("explain", str(r), "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert sorted(doc["targets"]) == ["demo/a", "demo/b"]
    first, tree = doc["targets"]["demo/a"][:2]
    assert (first["label"], first["status"], first["shared_by"]) == ("a/1:fake-upper", "hit", ["a", "b"])
    assert len(first["key"]) == 64 and first["reasons"] == []
    assert (tree["status"], tree["reasons"], len(tree["key"])) == ("run", ["new"], 64)


def test_unknown_target_suggests(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    assert project.run(str(r), "-t", "bb") == 1
    assert "unknown target 'bb' given with -t; did you mean 'b'?" in capsys.readouterr().err


@pytest.mark.parametrize("how,why", [
    ("raise", "worker exited with code 1"),
    ("exit", "worker exited with code 7"),
    ("segfault", "worker killed by SIGSEGV"),
    ("nooutput", "worker exited with code 1"),
])
def test_failed_step_fails_only_its_target(project: Project, capsys, how: str, why: str) -> None:
    recipe = FAKE_RECIPE.replace("fake-tree: {files: 2}",
                                 f"fake-fail: {{how: {how}}}\n      - fake-tree: {{}}")
    r = project.recipe(recipe)
    s = project.build_json(r, capsys)
    err = s["err"]
    assert s["rc"] == 2
    st = {k: v["status"] for k, v in s["by_label"].items()}
    assert st["a/2:fake-fail"] == "fail"
    assert st["a/3:fake-tree"] == "skip" and st["a/check:fake-length"] == "skip"
    assert st["b/2:fake-const"] == "run", s["by_label"]["b/2:fake-const"]["reasons"]
    assert s["by_label"]["a/3:fake-tree"]["reasons"] == ["upstream a/2:fake-fail failed"]
    assert s["targets"]["demo/a"]["status"] == "failed"
    assert s["targets"]["demo/b"]["status"] == "ok"
    assert f"a/2:fake-fail failed ({why})" in err
    assert "about to fail" in err  # the log tail
    assert "--only a/2:fake-fail --jobs 1" in err  # the command that reproduces it
    failed = s["by_label"]["a/2:fake-fail"]  # --json carries the same for machines
    assert failed["error"].startswith(f"a/2:fake-fail failed ({why})")
    assert "about to fail" in failed["log_tail"]
    assert "--only a/2:fake-fail --jobs 1" in failed["reproduce"]
    assert "error" not in s["by_label"]["b/2:fake-const"]
    # no cache entry for the failed task: it runs again next time
    s2 = project.build_json(r, capsys)
    assert s2["by_label"]["a/2:fake-fail"]["status"] == "fail"
    assert s2["by_label"]["b/2:fake-const"]["status"] == "hit"
    # an unfinished target writes nothing (there is nothing to judge)
    assert not (project.out / "demo/a").exists()
    assert s2["targets"]["demo/a"] == {"status": "failed", "manifest": None}


def test_a_failed_task_keeps_the_last_good_engine(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    project.build_json(r, capsys)
    good = (project.out / "demo/a/manifest.json").read_bytes()
    tree = sorted(p.name for p in (project.out / "demo/a/ir").iterdir())
    project.recipe(FAKE_RECIPE.replace("fake-tree: {files: 2}", "fake-fail: {how: exit}"))
    s = project.build_json(r, capsys)
    assert s["rc"] == 2 and "left as it was" in s["err"]
    assert (project.out / "demo/a/manifest.json").read_bytes() == good
    assert sorted(p.name for p in (project.out / "demo/a/ir").iterdir()) == tree


def test_fail_fast_stops_and_leaves_other_targets_alone(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    project.build_json(r, capsys)
    b_manifest = (project.out / "demo/b/manifest.json").read_bytes()
    recipe = FAKE_RECIPE.replace("fake-upper: {suffix: \"!\"}\n      - fake-tree",
                                 "fake-fail: {how: raise}\n      - fake-tree")
    project.recipe(recipe.replace("text: hello", "text: changed"))
    s = project.build_json(r, capsys, "--fail-fast", "--jobs", "1")
    assert s["rc"] == 2
    b_tasks = {t["label"]: t for t in s["tasks"] if t["label"].startswith("b/")}
    assert b_tasks["b/2:fake-const"]["status"] == "skip"
    assert b_tasks["b/2:fake-const"]["reasons"] == ["stopped by --fail-fast"]
    # b was stopped, not judged: its last good outputs stay
    assert (project.out / "demo/b/manifest.json").read_bytes() == b_manifest
    assert (project.out / "demo/b/model.txt").read_text() == "hello"


def test_only_runs_one_task(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    s = project.build_json(r, capsys, "--only", "b/2:fake-const")
    assert [t["label"] for t in s["tasks"]] == ["a/1:fake-upper", "b/2:fake-const"]
    assert s["targets"] == {}


def test_gate_failure_fails_target_without_artifacts(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE.replace("max_bytes: 1000", "max_bytes: 10"))
    s = project.build_json(r, capsys)
    err = s["err"]
    assert s["rc"] == 2
    assert s["targets"]["demo/a"]["status"] == "failed"
    assert "over by" in err
    m = json.loads((project.out / "demo/a/manifest.json").read_text())
    assert m["status"] == "failed" and m["checks"]["fake-length"]["passed"] is False
    assert not (project.out / "demo/a/ir").exists()
    # the gate is not in the key: loosening it re-measures nothing
    project.recipe(FAKE_RECIPE.replace("max_bytes: 1000", "max_bytes: 100000"))
    s = project.build_json(r, capsys)
    assert s["rc"] == 0 and {t["status"] for t in s["tasks"]} == {"hit"}
    assert (project.out / "demo/a/ir/part0.bin").exists()


def test_corrupt_blob_is_a_miss_and_is_repaired(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    project.build_json(r, capsys)
    target = project.out / "demo/b/model.txt"
    blob = Path(next(p for p in (project.cache / "cas").rglob("*") if p.is_file() and p.samefile(target)))
    target.unlink()
    blob.chmod(0o644)
    blob.write_text("tampered")
    capsys.readouterr()
    project.run(str(r), "--dry-run")
    plan = capsys.readouterr().out
    assert "RUN   b/2:fake-const  (cache entry invalid: output 'model' blob" in plan
    s = project.build_json(r, capsys)
    assert s["by_label"]["b/2:fake-const"]["status"] == "run"
    assert (project.out / "demo/b/model.txt").read_text() == "hello"


@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_interrupt_leaves_no_partial_state(project: Project, capsys, sig: str, code: int) -> None:
    import signal
    import subprocess
    import sys
    import time

    recipe = FAKE_RECIPE.replace("fake-const: {text: hello}", "fake-upper: {suffix: x, sleep: 30}")
    r = project.recipe(recipe)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", str(r), "--cache", str(project.cache),
         "--out", str(project.out), "--jobs", "2"],
        stderr=subprocess.PIPE, text=True,
        # as from a terminal: a suite started in the background (`make test &`) ignores SIGINT,
        # and a child inherits that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "RUN   b/2:fake-upper" in line:
            break
    time.sleep(0.5)
    status = Path(f"/proc/{proc.pid}/status").read_text()
    masks = [ln for ln in status.splitlines() if ln.startswith(("SigBlk", "SigIgn", "SigCgt"))]
    proc.send_signal(getattr(signal, sig))
    rc = proc.wait(30)
    assert rc == code, "".join(lines) + proc.stderr.read() + "\n".join(masks)
    time.sleep(0.5)
    workers = subprocess.run(["pgrep", "-f", f"orchestrator.run.worker.*{project.cache}"],
                             capture_output=True, text=True).stdout
    assert workers == ""  # no worker left behind
    assert not list((project.cache / "tmp").iterdir())  # scratch folders removed
    assert not [p for p in (project.cache / "cas").rglob(".*") if p.is_file()]  # no temp blobs
    # the finished shared task is reused, the interrupted one runs again
    capsys.readouterr()
    project.run(str(r), "--dry-run")
    plan = capsys.readouterr().out
    assert "HIT   a/1:fake-upper" in plan
    assert "RUN   b/2:fake-upper" in plan


def test_shapes_only_key_the_steps_that_use_them(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    project.build_json(r, capsys)
    project.recipe(FAKE_RECIPE.replace("targets:", "inputs: {shapes: {batch: [1, 4]}}\ntargets:"))
    s = project.build_json(r, capsys)
    assert {t["status"] for t in s["tasks"]} == {"hit"}


def test_removed_target_folder_is_pointed_out(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    project.build_json(r, capsys)
    project.recipe(FAKE_RECIPE.split("  b:\n")[0])
    s = project.build_json(r, capsys)
    assert f"note: {project.out / 'demo' / 'b'} belongs to no target of {r} any more" in s["err"]
    assert (project.out / "demo/b/manifest.json").exists()  # pointed out, never deleted


def test_blob_going_bad_during_a_build_fails_that_task_cleanly(project: Project, capsys) -> None:
    from orchestrator.store.local import LocalStore

    r = project.recipe(FAKE_RECIPE)
    project.build_json(r, capsys)
    # the plan sees a hit for a/1 and a RUN for a/2; between the two, a/1's blob disappears
    project.recipe(FAKE_RECIPE.replace("files: 2", "files: 5"))
    import orchestrator.run.scheduler as build_module

    real_job = build_module._job

    def job_after_damage(task, d, plan, store, outputs, opts):  # type: ignore[no-untyped-def]
        if task.step == "fake-tree":
            blob = LocalStore(project.cache).blob_path(outputs[next(iter(task.inputs.values()))[0]]
                                                       ["model"]["digest"])
            blob.chmod(0o644)
            blob.write_text("damaged")
        return real_job(task, d, plan, store, outputs, opts)

    build_module._job = job_after_damage
    try:
        s = project.build_json(r, capsys)
    finally:
        build_module._job = real_job
    assert s["rc"] == 2
    assert s["by_label"]["a/2:fake-tree"]["status"] == "fail"
    assert "could not start: an input in the cache is" in s["err"]
    assert not list((project.cache / "tmp").iterdir())
    s = project.build_json(r, capsys)  # the damaged blob's task is rebuilt, then all is well
    assert s["rc"] == 0 and s["by_label"]["a/1:fake-upper"]["status"] == "run"


def test_several_recipes_in_one_build(project: Project, capsys) -> None:
    import shutil

    for name in ("x", "y"):
        d = project.root / name
        d.mkdir()
        shutil.copy(project.root / "fake_steps.py", d / "fake_steps.py")
        shutil.copytree(project.root / "model", d / "model")
        (d / "r.yaml").write_text(FAKE_RECIPE.replace("name: demo", f"name: {name}")
                                  .replace("fake-tree: {files: 2}", "fake-fail: {how: raise}"))
    # the two plugin files differ: each recipe keeps its own step of that name
    with open(project.root / "y" / "fake_steps.py", "a") as f:
        f.write("\n# y's copy\n")
    capsys.readouterr()
    rc = project.run(str(project.root / "x/r.yaml"), str(project.root / "y/r.yaml"), "--json")
    out = capsys.readouterr()
    s = json.loads(out.out)
    assert rc == 2
    labels = [t["label"] for t in s["tasks"]]
    assert "x/a/2:fake-fail" in labels and "y/a/2:fake-fail" in labels
    assert "--only x/a/2:fake-fail" in out.err and "--only y/a/2:fake-fail" in out.err
    assert s["targets"]["x/b"]["status"] == s["targets"]["y/b"]["status"] == "ok"


def test_pending_reasons_include_changed_source(project: Project, capsys) -> None:
    recipe = FAKE_RECIPE.replace("fake-tree: {files: 2}", "fake-const: {text: t}")
    r = project.recipe(recipe)
    project.build_json(r, capsys)
    (project.root / "model/weights.bin").write_bytes(b"weights-v9")
    capsys.readouterr()
    project.run(str(r), "--dry-run")
    plan = capsys.readouterr().out
    # fake-length reads the source itself: its own input changed, whatever its upstream rebuilds
    assert "RUN   a/check:fake-length  (input changed: source; input changes: upstream" in plan


GATES_RECIPE = """\
name: gates
plugins: [fake_steps.py]
model:
  source: ./model
targets:
  {first}:
    steps:
      - fake-upper: {{suffix: "!"}}
    checks:
      fake-length: {{max_bytes: 1000}}
  {second}:
    steps:
      - fake-upper: {{suffix: "!"}}
    checks:
      fake-length: {{max_bytes: 3}}
"""


@pytest.mark.parametrize("first,second", [("a-loose", "b-strict"), ("b-loose", "a-strict")])
def test_targets_sharing_a_check_are_each_judged_by_their_own_gate(
        project: Project, capsys, first: str, second: str) -> None:
    r = project.recipe(GATES_RECIPE.format(first=first, second=second))
    s = project.build_json(r, capsys)
    checks = [t for t in s["tasks"] if t["step"] == "fake-length"]
    assert len(checks) == 1  # the measurement is shared ...
    assert s["targets"][f"gates/{first}"]["status"] == "ok"  # ... the judgement is not
    assert s["targets"][f"gates/{second}"]["status"] == "failed"
    loose = json.loads((project.out / f"gates/{first}/manifest.json").read_text())
    strict = json.loads((project.out / f"gates/{second}/manifest.json").read_text())
    assert loose["checks"]["fake-length"]["gate"] == {"max_bytes": 1000}
    assert strict["checks"]["fake-length"]["gate"] == {"max_bytes": 3}
    assert strict["failures"] == ["check fake-length: 24 bytes > max_bytes 3 (over by 21)"]


def test_manifest_records_the_params_that_were_keyed_and_ran(project: Project, capsys) -> None:
    """Not the raw recipe params, nor another target's: completed, with unused ones dropped."""
    r = project.recipe("""\
name: p
plugins: [fake_steps.py]
model: {source: ./model}
targets:
  x: {steps: [fake-mode: {salt: 5}]}
  y: {steps: [fake-mode: {salt: 7}]}
""")
    s = project.build_json(r, capsys)
    assert len(s["tasks"]) == 1  # salt does not apply to mode plain: one task
    for target in ("x", "y"):
        m = json.loads((project.out / f"p/{target}/manifest.json").read_text())
        assert m["steps"][0]["params"] == {"mode": "plain", "salt": 0}
        assert m["steps"][0]["metrics"] == {"salt": 0}  # what ran is what is recorded


def test_a_noop_build_rewrites_no_manifest(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    project.build_json(r, capsys)
    m = project.out / "demo/a/manifest.json"
    before = m.stat().st_ino, m.stat().st_mtime_ns
    project.build_json(r, capsys)
    assert (m.stat().st_ino, m.stat().st_mtime_ns) == before


def test_a_changed_target_folder_is_swapped_in_whole(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    project.build_json(r, capsys)
    folder = project.out / "demo/a"
    (folder / "stray.txt").write_text("from an older build")
    project.recipe(FAKE_RECIPE.replace("fake-tree: {files: 2}", "fake-tree: {files: 3}"))
    s = project.build_json(r, capsys)
    assert s["targets"]["demo/a"]["status"] == "ok"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sorted(p.name for p in (folder / "ir").iterdir()) == ["part0.bin", "part1.bin", "part2.bin", "sub"]
    assert manifest["steps"][1]["params"] == {"files": 3}
    assert not (folder / "stray.txt").exists()  # the folder is the new version, as a whole
    assert sorted(p.name for p in folder.parent.iterdir()) == ["a", "b"]  # no staging left


def test_swap_in_exchanges_folders_and_signals_wait(tmp_path: Path) -> None:
    import os
    import signal
    import threading
    import time

    from orchestrator.host.signals import signals_held
    from orchestrator.targets.materialize import swap_in

    new, dest = tmp_path / ".t.new", tmp_path / "t"
    new.mkdir()
    dest.mkdir()
    (new / "v").write_text("2")
    (dest / "v").write_text("1")
    got: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda n, f: got.append(n))
    # another thread with the signal unblocked: a mask on this thread alone would not hold it
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        with signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert got == []  # held while the folder is swapped
            swap_in(new, dest)
        assert got == [signal.SIGTERM]  # delivered right after
    finally:
        stop.set()
        other.join()
        signal.signal(signal.SIGTERM, previous)
    assert (dest / "v").read_text() == "2" and (new / "v").read_text() == "1"
