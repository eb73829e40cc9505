"""Recipe folders and globs, -t globs, and the history appended by builds that did work."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import FAKE_RECIPE, Project

from orchestrator.review.history import read_history

OTHER = FAKE_RECIPE.replace("name: demo", "name: other").replace('suffix: "!"', 'suffix: "?"')


def _targets(project: Project, capsys, *args: str) -> list[str]:
    capsys.readouterr()
    assert project.run(*args, "--dry-run", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    return sorted({t for task in doc["tasks"] for t in task["targets"]})


def test_folders_globs_and_target_globs(project: Project, capsys) -> None:
    (project.root / "pyproject.toml").write_text("")  # the project: plugins above recipes/ allowed
    recipes = project.root / "recipes"
    recipes.mkdir()
    (recipes / "demo.yaml").write_text(FAKE_RECIPE.replace("fake_steps.py", "../fake_steps.py")
                                       .replace("./model", "../model"))
    (recipes / "other.yaml").write_text(OTHER.replace("fake_steps.py", "../fake_steps.py")
                                        .replace("./model", "../model"))
    (recipes / "notes.txt").write_text("not a recipe")
    everything = ["demo/a", "demo/b", "other/a", "other/b"]
    assert _targets(project, capsys, str(recipes)) == everything
    assert _targets(project, capsys, str(recipes / "*.yaml")) == everything
    assert _targets(project, capsys, str(recipes / "d*.yaml")) == ["demo/a", "demo/b"]
    # a file named twice (by a glob and by name) is one recipe, not a duplicate name
    assert _targets(project, capsys, str(recipes / "*.yaml"), str(recipes / "demo.yaml")) == everything
    assert _targets(project, capsys, str(recipes), "-t", "[a]") == ["demo/a", "other/a"]
    assert _targets(project, capsys, str(recipes), "-t", "b", "-t", "*") == everything
    assert project.run(str(recipes / "x*.yaml")) == 1
    assert "no recipe matches" in capsys.readouterr().err
    assert project.run(str(recipes), "-t", "z*") == 1
    assert "-t 'z*' matches no target" in capsys.readouterr().err
    empty = project.root / "empty"
    empty.mkdir()
    assert project.run(str(empty)) == 1
    assert "no recipe (*.yaml, *.yml) in the folder" in capsys.readouterr().err


def test_history_appended_by_runs_that_did_work(project: Project, capsys) -> None:
    r = project.recipe(FAKE_RECIPE)
    history = project.cache / "history.jsonl"
    assert project.run(str(r)) == 0
    assert project.run(str(r)) == 0  # a no-op build appends nothing
    runs = read_history(history)
    assert [e["run"] for e in runs] == [1]
    a = runs[0]["targets"]["demo/a"]
    assert a["status"] == "ok" and set(a["keys"]) == {"1:fake-upper", "2:fake-tree"}
    assert all(len(k) == 64 for k in a["keys"].values())
    assert a["size"] > 0 and a["latency_ms"] == {} and a["parity"] == {}
    assert project.run(str(project.recipe(FAKE_RECIPE.replace("files: 2", "files: 3")))) == 0
    runs = read_history(history)
    assert [e["run"] for e in runs] == [1, 2]
    assert runs[1]["targets"]["demo/a"]["keys"]["2:fake-tree"] != a["keys"]["2:fake-tree"]
    assert runs[1]["targets"]["demo/b"]["keys"] == runs[0]["targets"]["demo/b"]["keys"]
    # with --manifests DIR the history lies beside DIR
    manifests = project.root / "manifests"
    assert project.run(str(r), "--manifests", str(manifests), "--force") == 0
    assert [e["run"] for e in read_history(project.root / "history.jsonl")] == [1]
    assert len(read_history(history)) == 2


def test_recipe_manifests_key_and_unfinished_targets_are_not_written(project: Project, capsys) -> None:
    text = FAKE_RECIPE.replace("name: demo\n", "name: demo\nmanifests: committed\n") + """\
  c:
    steps:
      - fake-fail: {how: raise}
"""
    r = project.recipe(text)
    committed = project.root / "committed" / "demo"
    committed.mkdir(parents=True)
    (committed / "c.json").write_text("from another machine\n")
    assert project.run(str(r)) == 2  # target c failed
    assert sorted(p.name for p in committed.iterdir()) == ["a.json", "b.json", "c.json"]
    assert (committed / "c.json").read_text() == "from another machine\n"
    assert (committed / "a.json").read_bytes() == (project.out / "demo/a/manifest.json").read_bytes()
    runs = read_history(project.root / "history.jsonl")  # beside the manifests folder
    assert runs[0]["targets"]["demo/c"] == {"status": "failed"}
    assert project.run(str(r), "--dry-run") == 0
    assert len(read_history(project.root / "history.jsonl")) == 1  # a plan does no work


def test_a_non_reproducible_engine_leaves_its_digests_out_of_the_comparison() -> None:
    from orchestrator.review.committed import reproducible_part

    def manifest(engine: str) -> dict:
        return {"schema": 1, "target": "orin", "status": "ok",
                "steps": [{"step": "export-onnx", "key": "k1", "outputs": {"model": {"digest": "o1"}}},
                          {"step": "tensorrt-build", "key": "k2", "reproducible": False,
                           "inputs": {"model": {"digest": "o1"}},
                           "outputs": {"model": {"digest": engine, "size": len(engine)}}}],
                "artifacts": [{"path": "model.plan", "digest": engine, "size": len(engine)}],
                "checks": {"parity": {"key": "c-" + engine, "mean_cosine": 0.99, "passed": True}},
                "benchmark": {"results": {"b1": {"median_ms": len(engine)}}}}

    a, b = reproducible_part(manifest("plan-1")), reproducible_part(manifest("plan-22"))
    assert a == b
    assert a["steps.0.outputs.model.digest"] == "o1" and a["steps.1.step"] == "tensorrt-build"
    assert a["checks.parity.passed"] is True and "checks.parity.key" not in a
    plain = manifest("plan-1")
    del plain["steps"][1]["reproducible"]
    assert reproducible_part(plain)["artifacts.0.digest"] == "plan-1"  # reproducible: compared


def _write_marks(cache: str, build: int) -> None:
    from types import SimpleNamespace as NS

    from orchestrator.review.history import write_last_run

    for i in range(40):  # each build records its tasks one by one: many chances to interleave
        task = NS(id=f"b{build}-t{i}", label=f"b{build}/{i}")
        graph = NS(tasks=lambda task=task: [task])
        write_last_run(Path(cache), graph, {task.id: NS(status="hit", key=f"{build}{i}")})


def test_builds_finishing_at_once_keep_each_others_last_run_marks(tmp_path: Path) -> None:
    """last-run.json is read, merged and written again by every build: without a lock, two builds
    finishing at once lost each other's marks (deploy-build graph then showed stale ones)."""
    import multiprocessing

    from orchestrator.review.history import read_last_run

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_marks, args=(str(tmp_path), b)) for b in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert len(read_last_run(tmp_path)) == 4 * 40


def test_each_history_line_records_its_branch_and_revision(project: Project, monkeypatch) -> None:
    import subprocess

    for var in ("GITHUB_REF_NAME", "GITHUB_SHA"):
        monkeypatch.delenv(var, raising=False)
    r = project.recipe(FAKE_RECIPE)
    history = project.cache / "history.jsonl"
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(project.root), "PATH": "/usr/bin:/bin"}

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=project.root, check=True, capture_output=True,
                              text=True, env=env).stdout.strip()

    assert project.run(str(r)) == 0  # not in a repository: neither field
    assert "branch" not in read_history(history)[-1] and "revision" not in read_history(history)[-1]
    git("init", "-q", "-b", "nightly")
    git("commit", "-q", "--allow-empty", "-m", "one")
    assert project.run(str(r), "--force") == 0  # in one: `git rev-parse`
    line = read_history(history)[-1]
    assert line["branch"] == "nightly" and line["revision"] == git("rev-parse", "HEAD")
    git("checkout", "-q", "--detach")
    assert project.run(str(r), "--force") == 0  # a detached HEAD: a revision, no branch
    line = read_history(history)[-1]
    assert "branch" not in line and line["revision"] == git("rev-parse", "HEAD")
    monkeypatch.setenv("GITHUB_REF_NAME", "12/merge")  # GitHub Actions: what it says wins
    monkeypatch.setenv("GITHUB_SHA", "f" * 40)
    assert project.run(str(r), "--force") == 0
    line = read_history(history)[-1]
    assert (line["branch"], line["revision"]) == ("12/merge", "f" * 40)


def test_a_target_record_keeps_what_the_report_draws() -> None:
    from orchestrator.review.history import target_record

    manifest = {
        "status": "failed", "failures": ["check parity: min cosine 0.91 < 0.97 (short by 0.06)"],
        "steps": [{"step": "export-onnx", "key": "k1"}],
        "artifacts": [{"path": "model.onnx", "size": 10}],
        "checks": {"parity": {"mean_cosine": 0.95, "min_cosine": 0.91, "passed": False,
                              "gate": {"mean_cosine": None, "min_cosine": 0.97},
                              "thresholds": {"mean_cosine": 0.99, "min_cosine": 0.97}}},
        "benchmark": {"key": "bk", "noisy": True, "results": {
            "b1": {"median_ms": 8.0, "speedup": 2.5, "speedup_interval": [2.4, 2.6], "noisy": True},
            "b8": {"median_ms": 60.0, "speedup": 2.0, "speedup_interval": [1.9, 2.1]}},
            "gates": [{"gate": "min_speedup", "threshold": 2.0, "verdict": "passed"},
                      {"gate": "min_speedup", "threshold": 3.0, "verdict": "not judged here"}]},
    }
    rec = target_record(manifest, "failed")
    assert rec["failures"] == manifest["failures"]
    assert rec["noisy_points"] == ["b1"] and rec["noisy"] is True
    assert rec["speedup_interval"] == {"b1": [2.4, 2.6], "b8": [1.9, 2.1]}
    assert rec["benchmark_key"] == "bk"
    # the thresholds judged here: a min_speedup for other machines is left out; the parity one
    # in effect (the precision's default where the recipe set none)
    assert rec["gates"] == {"min_speedup": 2.0, "mean_cosine": 0.99}
    plain = target_record({"status": "ok", "steps": [], "artifacts": []}, "ok")
    assert not {"failures", "noisy_points", "speedup_interval", "gates", "benchmark_key"} & set(plain)
