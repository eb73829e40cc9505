"""Issue 19: a target's `search:` over alternative chains and params, expanded into the one DAG
(shared steps once, each variant under its own keys), pruned by cheap gates, timed together, the
winner materialized as the target; a stable choice (pure, from recorded figures), and a real
build of a tiny BERT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import main
from orchestrator.recipe import Search
from orchestrator.recipe.search import choose, clearly_better, front

AVX2 = {"cpu_features": ["avx", "avx2", "fma"], "cpu_count": 2}
VNNI = {"cpu_features": ["avx", "avx2", "fma", "avx512f", "avx512_vnni"], "cpu_count": 2}


def r(name: str, speedup: float | None, lo: float, hi: float, status: str = "ok",
      cosine: float = 0.99, size: int = 100) -> dict[str, Any]:
    return {"name": name, "variant": name.split("~")[0], "params": {}, "status": status,
            "speedup": speedup, "interval": [lo, hi], "mean_cosine": cosine, "size": size}


SPEC = Search.model_validate({"variants": {"ort": {"steps": [{"export-onnx": {}}]},
                                           "ov": {"steps": [{"export-onnx": {}}]},
                                           "edge": {"steps": [{"export-onnx": {}}]}}})


def test_the_best_passing_variant_wins_and_a_failed_one_never_does() -> None:
    rows = [r("ort", 2.5, 2.4, 2.6), r("ov", 4.3, 4.1, 4.4), r("edge", 9.0, 8.0, 10.0, "failed")]
    s = choose(SPEC, rows, VNNI, None)
    assert s["winner"] == "ov" and s["why"].startswith("best latency: ov 4.3x [4.1-4.4]")
    assert s["front"] == ["ov"]
    none = choose(SPEC, [r("ort", None, 0, 0, "failed")], VNNI, None)
    assert none["winner"] is None


def test_the_previous_winner_stays_unless_clearly_beaten_on_the_same_machine_class() -> None:
    previous = {"winner": "ort", "machine": VNNI}
    close = [r("ort", 4.2, 4.0, 4.4), r("ov", 4.3, 4.1, 4.5)]  # overlapping: noise
    kept = choose(SPEC, close, VNNI, previous)
    assert kept["winner"] == "ort" and kept["why"].startswith("kept the previous winner: ov")
    clear = [r("ort", 2.5, 2.4, 2.6), r("ov", 4.3, 4.1, 4.5)]
    assert choose(SPEC, clear, VNNI, previous)["winner"] == "ov"
    # chosen on another machine class: no incumbent, the best here wins
    assert choose(SPEC, close, AVX2, previous)["winner"] == "ov"
    assert not clearly_better(close[1], close[0], "latency")
    assert clearly_better(clear[1], clear[0], "latency")


def test_a_pin_decides_per_machine_class() -> None:
    spec = SPEC.model_copy(update={"pin": Search.model_validate({
        "variants": SPEC.model_dump()["variants"],
        "pin": [{"variant": "ort", "when": {"cpu_features": ["avx512_vnni"]}}]}).pin})
    rows = [r("ort", 2.5, 2.4, 2.6), r("ov", 4.3, 4.1, 4.4)]
    assert choose(spec, rows, VNNI, None)["winner"] == "ort"  # pinned where VNNI exists
    assert choose(spec, rows, AVX2, None)["winner"] == "ov"  # elsewhere: measured


def test_the_front_is_what_nothing_beats_on_speed_accuracy_and_size() -> None:
    rows = [r("fast", 5.0, 4.9, 5.1, cosine=0.990, size=100),
            r("exact", 2.0, 1.9, 2.1, cosine=0.999, size=400),
            r("worse", 1.5, 1.4, 1.6, cosine=0.990, size=400),
            r("failed", 9.0, 8.9, 9.1, status="failed")]
    assert front(rows) == ["exact", "fast"]


def _recipe(tmp: Path, search: str) -> Path:
    (tmp / "pyproject.toml").write_text("")
    path = tmp / "s.yaml"
    path.write_text("name: s\nmodel:\n  source: ./model\ntargets:\n  auto:\n    search:\n"
                    + "".join(f"      {line}\n" for line in search.splitlines())
                    + "    checks:\n      parity: {}\n")
    return path


def test_variants_expand_by_their_space_and_a_random_draw_is_reproducible(tmp_path: Path) -> None:
    from orchestrator.recipe import load_recipe

    (tmp_path / "model").mkdir()
    space = ("variants:\n  q:\n    steps:\n      - export-onnx: {}\n"
             "      - ort-quantize: {mode: dynamic}\n"
             "    space: {2.per_channel: [true, false], 2.reduce_range: [false, true]}\n"
             "  plain:\n    steps: [export-onnx: {}]\n")
    rec = load_recipe(_recipe(tmp_path, space))
    plan = rec.searches["auto"]
    assert sorted(plan.candidates) == ["auto~plain", "auto~q~1", "auto~q~2", "auto~q~3", "auto~q~4"]
    assert plan.candidates["auto~q~3"].params == {"2.per_channel": False, "2.reduce_range": False}
    [quantize] = [u for u in rec.steps["auto~q~3"] if u.info.name == "ort-quantize"]
    assert quantize.params.per_channel is False  # type: ignore[attr-defined]
    drawn = [sorted(load_recipe(_recipe(tmp_path, space + "strategy: random\nmax_variants: 2\n"
                                        "seed: 7\n")).searches["auto"].candidates)
             for _ in range(2)]
    assert drawn[0] == drawn[1] and len(drawn[0]) == 2


@pytest.mark.parametrize("search,error", [
    ("variants:\n  q:\n    steps: [export-onnx: {}]\n    space: {3.opset: [17]}\n",
     "space key '3.opset' at"),
    ("variants:\n  q:\n    steps: [export-onnx: {}]\npin: [{variant: qq}]\n",
     "names 'qq', which is no variant; did you mean 'q'?"),
    ("variants:\n  q:\n    steps: [export-onnx: {}]\n    space: {1.opset: "
     + str(list(range(13, 80))) + "}\n", "expands to 67 variants"),
    ("variants:\n  q:\n    steps: [export-onnx: {}]\npin: [{variant: q, on: {cpu_features: [avx2]}}]\n",
     "YAML reads an unquoted on/off/yes/no key as true/false"),
])
def test_a_search_that_cannot_work_is_a_located_error(tmp_path: Path, search: str,
                                                      error: str) -> None:
    from orchestrator.errors import FatalError
    from orchestrator.recipe import load_recipe

    (tmp_path / "model").mkdir()
    with pytest.raises(FatalError, match=None) as e:
        load_recipe(_recipe(tmp_path, search))
    assert error in str(e.value) and "s.yaml:" in str(e.value), str(e.value)


SEARCH = """\
name: s
model:
  source: ./model
inputs:
  shapes: {{batch: [1], sequence: [16]}}
targets:
  auto:
    search:
      variants:
        fp32:
          steps: [export-onnx: {{opset: 17}}]
        int8:
          steps:
            - export-onnx: {{opset: 17}}
            - ort-quantize: {{mode: dynamic, per_channel: {per_channel}}}
        ov:
          steps:
            - export-onnx: {{opset: 17}}
            - openvino-convert: {{}}
    checks:
      parity: {{max_abs_diff: 0.01}}
      benchmark: {{threads: 1, warmup: 1, min_runs: 4, max_runs: 20, window: 2, max_seconds: 2}}
"""


def _build(root: Path, capsys: pytest.CaptureFixture[str], per_channel: str = "true"
           ) -> tuple[int, dict[str, Any], dict[str, Any]]:
    (root / "s.yaml").write_text(SEARCH.format(per_channel=per_channel))
    capsys.readouterr()
    rc = main([str(root / "s.yaml"), "--cache", str(root / "cache"), "--out", str(root / "build"),
               "--json"])
    tasks = {t["label"]: t for t in json.loads(capsys.readouterr().out)["tasks"]}
    return rc, tasks, json.loads((root / "build/s/auto/manifest.json").read_text())


@pytest.mark.slow
def test_a_search_builds_prunes_times_together_and_materializes_the_winner(
        tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    rc, tasks, m = _build(tmp_path, capsys)
    assert rc == 0
    # one export for all three variants; int8 fails the fp32-level parity gate: never timed
    assert len([t for t in tasks if t.endswith("1:export-onnx")]) == 1
    assert tasks["auto~int8/check:benchmark"]["status"] == "skip"
    assert tasks["auto~int8/check:benchmark"]["reasons"][0].startswith("not measured: parity")
    timed = [t for t in ("auto~fp32", "auto~ov") if tasks[f"{t}/check:benchmark"]["status"] == "run"]
    assert timed == ["auto~fp32", "auto~ov"]
    s = m["search"]
    assert m["target"] == "auto" and m["status"] == "ok" and s["winner"] in ("fp32", "ov")
    rows = {row["name"]: row for row in s["variants"]}
    assert rows["int8"]["status"] == "failed" and "parity" in rows["int8"]["why"]
    assert rows["fp32"]["speedup"] and rows["ov"]["speedup"] and s["machine"]["cpu_features"]
    assert (tmp_path / "build/s/auto" / m["artifacts"][0]["path"]).exists()
    assert not (tmp_path / "build/s/auto~fp32").exists()  # candidates get no folders
    # unchanged: a no-op, the same winner; one variant's param changed: only it rebuilds
    rc, again, m2 = _build(tmp_path, capsys)
    assert {t["status"] for t in again.values()} <= {"hit", "skip"}
    assert m2["search"]["winner"] == s["winner"]
    rc, changed, _ = _build(tmp_path, capsys, per_channel="false")
    ran = sorted(t for t, v in changed.items() if v["status"] == "run")
    assert ran and all(t.startswith("auto~int8/") for t in ran), ran
