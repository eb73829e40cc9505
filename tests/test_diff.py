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
    "benchmark": {"grid": {"b1_s128": {"median_ms": 8.0}}},
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
    new["benchmark"]["grid"]["b1_s128"]["median_ms"] = 9.0
    a, b = write(tmp_path, "old", OLD), write(tmp_path, "new", new)
    assert main(["diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "bert-edge/cpu-int8:",
        "  step 1:ort-quantize: params.per_channel true -> false",
        "  artifact model.onnx: size 1000 -> 1100 (+10.0%), digest changed",
        "  checks.parity.mean_cosine: 0.994 -> 0.967 (-2.7%)",
        "  benchmark.grid.b1_s128.median_ms: 8 -> 9 (+12.5%)",
    ]
    rc = main(["diff", str(a), str(b), "--fail-on", "parity.mean_cosine<0.99",
               "--fail-on", "latency+10%", "--fail-on", "size+20%"])
    out = capsys.readouterr().out
    assert rc == 2
    assert "REGRESSION bert-edge/cpu-int8: parity.mean_cosine<0.99: parity.mean_cosine is 0.967" in out
    assert "REGRESSION bert-edge/cpu-int8: latency+10%: benchmark.grid.b1_s128.median_ms 8 -> 9" in out
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
