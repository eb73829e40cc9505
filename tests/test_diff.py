from __future__ import annotations

import copy
import json
from pathlib import Path

from orchestrator.cli import main

OLD = {
    "schema": 1, "status": "ok", "target": "cpu-int8",
    "model": {"digest": "aa"},
    "steps": [{"step": "ort-quantize", "version": "1", "params": {"per_channel": True},
               "toolchain": {"onnxruntime": "1.32.0"}, "metrics": {"size_after": 100}}],
    "artifacts": [{"path": "model.onnx", "digest": "d1", "size": 1000}],
    "checks": {"parity": {"mean_cosine": 0.994, "min_cosine": 0.989, "key": "k1"}},
    "benchmark": {"results": {"b1_s128": {"median_ms": 8.0}}},  # no speed-up: raw medians
}


def write(tmp: Path, name: str, m: dict) -> Path:
    p = tmp / name / "bert-edge" / "cpu-int8" / "manifest.json"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps(m))
    return tmp / name


def test_diff_reports_changes_and_fails_on_rules(tmp_path: Path, capsys) -> None:
    new = copy.deepcopy(OLD)
    new["steps"][0]["params"]["per_channel"] = False
    new["artifacts"][0].update(digest="d2", size=1100)
    new["checks"]["parity"].update(mean_cosine=0.967, key="k2")
    new["benchmark"]["results"]["b1_s128"]["median_ms"] = 9.0
    a, b = write(tmp_path, "old", OLD), write(tmp_path, "new", new)
    assert main(["diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "bert-edge/cpu-int8:",
        "  step 1:ort-quantize: params.per_channel true -> false",
        "  artifact model.onnx: size 1000 -> 1100 (+10.0%), digest changed",
        "  checks.parity.mean_cosine: 0.994 -> 0.967 (-2.7%)",
        "  benchmark.results.b1_s128.median_ms: 8 -> 9 (+12.5%)",
    ]
    rc = main(["diff", str(a), str(b), "--fail-on", "parity.mean_cosine<0.99",
               "--fail-on", "latency+10%", "--fail-on", "size+20%"])
    out = capsys.readouterr().out
    assert rc == 2
    assert "REGRESSION bert-edge/cpu-int8: parity.mean_cosine<0.99: parity.mean_cosine is 0.967" in out
    assert ("REGRESSION bert-edge/cpu-int8: latency+10%: b1_s128 8 -> 9 ms (+12.5%, raw medians, "
            "band ±0%)") in out
    assert "size+20%" not in out


def test_identical_manifests(tmp_path: Path, capsys) -> None:
    a, b = write(tmp_path, "old", OLD), write(tmp_path, "new", OLD)
    assert main(["diff", str(a), str(b), "--fail-on", "latency+1%"]) == 0
    assert capsys.readouterr().out == "bert-edge/cpu-int8: no changes\n"


def test_bad_rule_is_a_user_error(tmp_path: Path, capsys) -> None:
    a = write(tmp_path, "old", OLD)
    assert main(["diff", str(a), str(a), "--fail-on", "faster please"]) == 1
    assert "cannot read --fail-on rule 'faster please'" in capsys.readouterr().err


def test_not_a_manifest_and_bad_numbers(tmp_path: Path, capsys) -> None:
    a = write(tmp_path, "old", OLD)
    log = tmp_path / "run-log.json"
    log.write_text('{"host": "x", "tasks": []}')
    assert main(["diff", str(log), str(a / "bert-edge/cpu-int8/manifest.json")]) == 1
    assert "is not a deploy-build manifest" in capsys.readouterr().err
    assert main(["diff", str(a), str(a), "--fail-on", "x>1.2.3"]) == 1
    assert "cannot read --fail-on rule 'x>1.2.3'" in capsys.readouterr().err


def test_a_rule_naming_an_unknown_metric_is_a_user_error_before_any_diff(tmp_path: Path, capsys) -> None:
    new = copy.deepcopy(OLD)
    new["checks"]["parity"]["mean_cosine"] = 0.5
    a, b = write(tmp_path, "old", OLD), write(tmp_path, "new", new)
    assert main(["diff", str(a), str(b), "--fail-on", "parity.mean_cosin<0.99"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # found before anything is printed
    assert captured.err == ("error: --fail-on rule 'parity.mean_cosin<0.99' names 'parity.mean_cosin', "
                            "which no manifest holds as a number; did you mean 'parity.mean_cosine'?\n")
    assert main(["diff", str(a), str(b), "--fail-on", "parity.runtime<1"]) == 1


def _point(median: float, speedup: float, interval: list[float], spread: float = 0.02) -> dict:
    return {"median_ms": median, "p90_ms": median * 1.1, "stable": True, "spread": spread,
            "speedup": speedup, "speedup_interval": interval, "noisy": False, "noise": [],
            "reference": {"median_ms": median * speedup}}


def real_like(per_channel: bool) -> dict:
    """A manifest shaped as the build writes it (recipe name, keys, inputs, benchmark results)."""
    quant_key = "q" * 60 + ("aaaa" if per_channel else "bbbb")
    return {
        "schema": 1, "status": "ok", "target": "cpu-int8",
        "recipe": {"name": "bert-edge", "digest": "r1"},
        "model": {"digest": "m1"},
        "steps": [
            {"step": "export-onnx", "key": "e" * 64, "version": "1", "params": {"opset": 17},
             "inputs": {"model": {"digest": "m1"}}, "toolchain": {"torch": "2.13.0"}, "metrics": {}},
            {"step": "ort-quantize", "key": quant_key, "version": "1",
             "params": {"per_channel": per_channel}, "inputs": {"model": {"digest": "o1"}},
             "toolchain": {"onnxruntime": "1.32.0"}, "metrics": {}},
        ],
        "artifacts": [{"path": "model.onnx", "digest": "d1" if per_channel else "d2",
                       "size": 22_800_000 if per_channel else 22_700_000}],
        "checks": {"parity": {"mean_cosine": 0.994 if per_channel else 0.967,
                              "min_cosine": 0.989 if per_channel else 0.959, "passed": True}},
        "benchmark": {"results": {
            "b1_s128": _point(8.6 if per_channel else 8.8, 2.9 if per_channel else 2.85,
                              [2.7, 3.1] if per_channel else [2.6, 3.0]),
            "b8_s128": _point(65.0 if per_channel else 80.0, 2.4 if per_channel else 1.9,
                              [2.3, 2.5] if per_channel else [1.8, 2.0]),
        }},
    }


def _committed(tmp: Path, name: str, m: dict) -> Path:
    p = tmp / name / "manifests" / "bert-edge" / "cpu-int8.json"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps(m, indent=2, sort_keys=True))
    return tmp / name / "manifests"


def test_json_format_gives_changes_noise_and_key_reasons(tmp_path: Path, capsys) -> None:
    a = _committed(tmp_path, "old", real_like(True))
    b = _committed(tmp_path, "new", real_like(False))
    assert main(["diff", str(a), str(b), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    c = doc["targets"]["bert-edge/cpu-int8"]
    assert c["change"] == "changed"
    assert c["parity"]["mean_cosine"] == {"old": 0.994, "new": 0.967, "delta": -0.027}
    assert c["size"] == {"old": 22_800_000, "new": 22_700_000, "pct": -0.44}
    # judged through the speed-up vs PyTorch each run measured paired: b1 2.9x [2.7-3.1] ->
    # 2.85x [2.6-3.0], engine time relative to PyTorch +1.8% [-10%..+19%]: noise; b8 2.4x ->
    # 1.9x, +26.3% [+15%..+38.9%]: slower (the raw medians moved +2.3% and +23.1%)
    b1, b8 = c["latency"]["b1_s128"], c["latency"]["b8_s128"]
    assert b1["verdict"] == "noise" and b1["basis"] == "through the speed-up vs PyTorch"
    assert b1["pct"] == 2.33 and b1["change_pct"] == 1.75
    assert b8 == {"old": 65.0, "new": 80.0, "pct": 23.08, "basis": "through the speed-up vs PyTorch",
                  "verdict": "slower", "change_pct": 26.32, "interval_pct": [15.0, 38.89]}
    assert c["speedup"]["b1_s128"]["verdict"] == "noise"
    assert c["speedup"]["b8_s128"]["verdict"] == "worse"
    assert c["keys"] == [{"step": "2:ort-quantize", "old": "q" * 60 + "aaaa", "new": "q" * 60 + "bbbb",
                          "why": ["param changed: per_channel true -> false"]}]
    assert doc["regressions"] == []


def test_text_format_marks_latency_inside_the_spread_as_noise(tmp_path: Path, capsys) -> None:
    a = _committed(tmp_path, "old", real_like(True))
    b = _committed(tmp_path, "new", real_like(False))
    assert main(["diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert ("  benchmark.results.b1_s128.median_ms: 8.6 -> 8.8 (+2.3%)  (judged +1.8% "
            "[-10.0%..+19.2%] through the speed-up vs PyTorch: noise)") in out
    assert ("  benchmark.results.b8_s128.median_ms: 65 -> 80 (+23.1%)  (judged +26.3% "
            "[+15.0%..+38.9%] through the speed-up vs PyTorch: slower)") in out


HEADER = "| target | verdict | parity (mean cosine) | size | latency (median) | speed-up | cause |"


def test_markdown_table_first_then_details(tmp_path: Path, capsys) -> None:
    a = _committed(tmp_path, "old", real_like(True))
    b = _committed(tmp_path, "new", real_like(False))
    assert main(["diff", str(a), str(b), "--format", "md", "--fail-on", "latency+10%"]) == 2
    md = capsys.readouterr().out
    lines = md.splitlines()
    table_at = lines.index(HEADER)
    assert lines[table_at + 1] == "|---|---|---|---|---|---|---|"
    row = lines[table_at + 2].split(" | ")
    assert row[0] == "| `bert-edge/cpu-int8`" and row[1] == "ok"
    # each change marked by what it means: lower cosine is worse, a smaller engine better
    assert row[2] == "0.9940 → 0.9670 (-0.0270) ↓ 🔴 worse"
    assert row[3] == "21.7 MB → 21.6 MB (-0.4%) ↓ 🟢 better"
    b1, b8 = row[4].split("<br>")
    assert b1 == "b1_s128 8.6 → 8.8 ms (+1.8% [-10.0%..+19.2%] vs PyTorch) ≈ noise"
    assert b8 == "b8_s128 65 → 80 ms (+26.3% [+15.0%..+38.9%] vs PyTorch) ↑ 🔴 slower"
    assert row[5].split("<br>") == [
        "b1_s128 2.9x [2.7-3.1] → 2.85x [2.6-3] ≈ noise (intervals overlap)",
        "b8_s128 2.4x [2.3-2.5] → 1.9x [1.8-2] (-20.8%) ↓ 🔴 worse"]
    assert row[6] == "`2:ort-quantize` per_channel true → false |"  # the cause, inline
    assert md.index("<details>") > table_at  # the table comes first, details folded below it
    body = md[md.index("<details>"):md.index("</details>")]
    assert "<summary>bert-edge/cpu-int8: changed" in body
    assert ("- `2:ort-quantize` `qqqqqqqqqqqq` → `qqqqqqqqqqqq`: "
            "param changed: per_channel true -> false") in body
    assert "- step 2:ort-quantize: params.per_channel true -> false" in body
    # the line is escaped as a whole (it holds manifest names): its brackets read \[ \]
    assert ("- :x: bert-edge/cpu-int8: latency+10%: b8_s128 +26.3% \\[+15.0%..+38.9%\\] through the "
            "speed-up vs PyTorch (raw medians 65 -> 80 ms)") in md


def _row(tmp: Path, capsys, old: dict, new: dict, *args: str) -> list[str]:
    """The table row of bert-edge/cpu-int8 in `diff --format md`, split into its cells."""
    a, b = _committed(tmp, "old", old), _committed(tmp, "new", new)
    main(["diff", str(a), str(b), "--format", "md", *args])
    lines = capsys.readouterr().out.splitlines()
    return lines[lines.index(HEADER) + 2].removeprefix("| ").removesuffix(" |").split(" | ")


def test_markdown_verdict_says_why_it_failed_and_the_cause(tmp_path: Path, capsys) -> None:
    old, new = real_like(True), real_like(False)
    new["status"] = "failed"
    new["failures"] = ["check parity: min cosine 0.9193 < 0.97 (short by 0.0507)",
                       "check parity: mean cosine 0.967 < 0.99 (short by 0.023)"]
    new["steps"][0]["toolchain"]["torch"] = "2.14.0"  # the export's key changes too
    new["steps"][0]["key"] = "f" * 64
    new["checks"]["parity"]["gate"] = {"min_cosine": 0.97}
    old["checks"]["parity"]["gate"] = {"min_cosine": 0.95}
    row = _row(tmp_path, capsys, old, new)
    assert row[1] == ("ok → **failed** 🔴: parity: min cosine 0.9193 &lt; 0.97 (short by 0.0507)"
                      "<br>parity: mean cosine 0.967 &lt; 0.99 (short by 0.023)")
    # the root causes: a param and a toolchain, not the `input changed` they cascade into; and the
    # gate that changed
    assert row[6].split("<br>") == ["`1:export-onnx` torch 2.13.0 → 2.14.0 (toolchain)",
                                    "`2:ort-quantize` per_channel true → false",
                                    "gate parity.min_cosine 0.95 → 0.97 (+2.1%)"]
    # the other way round: a fixed target reads green, a faster engine faster, more cosine better
    row = _row(tmp_path / "back", capsys, new, old)
    assert row[1] == "failed → **ok** 🟢"
    assert row[2] == "0.9670 → 0.9940 (+0.0270) ↑ 🟢 better"
    assert row[4].split("<br>")[1] == "b8_s128 80 → 65 ms (-20.8% [-28.0%..-13.0%] vs PyTorch) ↓ 🟢 faster"
    assert row[5].split("<br>")[1] == "b8_s128 1.9x [1.8-2] → 2.4x [2.3-2.5] (+26.3%) ↑ 🟢 better"


def test_markdown_a_noisy_point_reads_as_noise_never_as_a_lost_speedup(tmp_path: Path, capsys) -> None:
    old, new = real_like(True), real_like(True)
    # the base measured 5x on a noisy machine (a narrow interval all the same), the head 1.9x
    old["benchmark"]["results"]["b1_s128"].update(speedup=5.0, speedup_interval=[4.9, 5.1], noisy=True)
    new["benchmark"]["results"]["b1_s128"].update(speedup=1.9, speedup_interval=[1.8, 2.0])
    new["benchmark"]["results"]["b8_s128"]["noisy"] = True
    new["benchmark"]["results"]["b8_s128"].update(speedup=2.0, speedup_interval=[1.9, 2.1])
    new["steps"][1]["key"] = "z" * 64
    row = _row(tmp_path, capsys, old, new)
    b1, b8 = row[5].split("<br>")
    assert b1 == "b1_s128 5x [4.9-5.1] → 1.9x [1.8-2] ≈ noise (base measured noisy)"
    assert b8 == "b8_s128 2.4x [2.3-2.5] → 2x [1.9-2.1] ≈ noise (head measured noisy)"
    assert "62" not in row[5] and "worse" not in row[5]
    # the latency judged through those speed-ups is noise too (a noisy end decides no change
    # smaller than compare.NOISY_DECIDES), and says so
    assert row[4].split("<br>")[0].endswith("vs PyTorch, noisy) ≈ noise")


def test_markdown_renders_the_basis_of_each_latency_verdict(tmp_path: Path, capsys) -> None:
    from orchestrator.review.compare import compare
    from orchestrator.review.markdown import latency_cell

    old, new = real_like(True), real_like(False)
    paired = {"b1_s128": {"ratio": 1.3, "interval": [1.2, 1.4], "noisy": False},
              "b8_s128": {"ratio": 1.01, "interval": [0.97, 1.05], "noisy": True}}
    assert latency_cell(compare(old, new, ["x"], paired)).split("<br>") == [
        "b1_s128 8.6 → 8.8 ms (+30.0% [+20.0%..+40.0%] paired A/B) ↑ 🔴 slower",
        "b8_s128 65 → 80 ms (+1.0% [-3.0%..+5.0%] paired A/B, noisy) ≈ noise"]
    same = real_like(True)
    same["benchmark"]["key"] = old["benchmark"]["key"] = "bench"
    same["benchmark"]["results"]["b8_s128"]["median_ms"] = 70.0
    assert latency_cell(compare(old, same, ["x"])).split("<br>") == [
        "b1_s128 8.6 ms", "b8_s128 70 ms (same engine re-measured)"]
    raw_old, raw_new = copy.deepcopy(OLD), copy.deepcopy(OLD)
    raw_new["benchmark"]["results"]["b1_s128"]["median_ms"] = 9.0
    assert latency_cell(compare(raw_old, raw_new, ["x"])) == (
        "b1_s128 8 → 9 ms (+12.5% raw medians, band ±0%) ↑ 🔴 slower")


def _git(cwd: Path, *args: str) -> None:
    import subprocess

    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(cwd), "PATH": "/usr/bin:/bin"})


def test_diff_against_a_git_revision_reads_tracked_manifests(tmp_path: Path, capsys, monkeypatch) -> None:
    repo = tmp_path / "repo"
    manifests = _committed(tmp_path, "repo", real_like(True))
    (repo / ".gitignore").write_text("build/\n")
    build = repo / "build" / "bert-edge" / "cpu-int8"  # ignored: never read in git mode
    build.mkdir(parents=True)
    (build / "manifest.json").write_text(json.dumps(real_like(False)))
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    (manifests / "bert-edge" / "cpu-int8.json").write_text(json.dumps(real_like(False)))
    monkeypatch.chdir(repo)
    assert main(["diff", "HEAD", ".", "--format", "json"]) == 0
    c = json.loads(capsys.readouterr().out)["targets"]["bert-edge/cpu-int8"]
    assert c["parity"]["mean_cosine"]["delta"] == -0.027
    assert main(["diff", "main", "manifests/"]) == 0
    assert "step 2:ort-quantize: params.per_channel true -> false" in capsys.readouterr().out
    _git(repo, "commit", "-q", "-am", "two")
    assert main(["diff", "HEAD~1", "HEAD", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["targets"]["bert-edge/cpu-int8"]["change"] == "changed"
    assert main(["diff", "HEAD", "."]) == 0
    assert capsys.readouterr().out == "bert-edge/cpu-int8: no changes\n"
    assert main(["diff", "HEAD", "build"]) == 1  # ignored: no tracked manifest there
    assert "no manifest under build, neither at revision HEAD" in capsys.readouterr().err
    assert main(["diff", "nosuchrev", "."]) == 1
    assert "nosuchrev is neither a manifest, a folder of them, nor a git revision" in capsys.readouterr().err


def test_markdown_added_removed_and_unchanged_targets(tmp_path: Path, capsys) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    gone, same, added = real_like(True), real_like(True), real_like(False)
    gone["target"], added["target"] = "cpu-fp16", "openvino-int8"
    for folder, ms in ((old, (gone, same)), (new, (same, added))):
        for m in ms:
            p = folder / "bert-edge" / f"{m['target']}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(m))
    assert main(["diff", str(old), str(new), "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("### deploy-build diff: 2 of 3 targets changed\n")
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in md.splitlines()
            if line.startswith("| `")}
    assert rows["`bert-edge/cpu-fp16`"][1] == "ok (removed)"
    assert rows["`bert-edge/openvino-int8`"][1] == "ok (added)"
    assert rows["`bert-edge/cpu-int8`"][1] == "ok" and rows["`bert-edge/cpu-int8`"][2] == "0.9940"
    assert md.count("<details>") == 2  # an unchanged target has nothing to fold


def test_noise_band_of_a_noisy_point_includes_its_run_spread() -> None:
    from orchestrator.review.compare import band, latency

    quiet = _point(10.0, 2.0, [1.98, 2.02], spread=0.01)
    noisy = {**_point(12.0, 2.0, [1.9, 2.1], spread=0.03), "noisy": True}  # p90 10% over median
    assert band(quiet) == 0.01 and band(noisy) == 0.1
    # points without a speed-up (older manifests) are judged on the raw medians and the band
    quiet, noisy = ({k: v for k, v in p.items() if k != "speedup"} for p in (quiet, noisy))
    old = {"benchmark": {"results": {"p": quiet}}}
    assert latency(old, {"benchmark": {"results": {"p": noisy}}})["p"]["verdict"] == "slower"  # +20%
    near = {**noisy, "median_ms": 10.8, "p90_ms": 11.88}
    assert latency(old, {"benchmark": {"results": {"p": near}}})["p"] == {
        "old": 10.0, "new": 10.8, "pct": 8.0, "band_pct": 10.0, "verdict": "noise",
        "basis": "raw medians", "change_pct": 8.0}
