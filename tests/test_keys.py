from orchestrator.hashing import canonical_json
from orchestrator.keys import KEY_SCHEMA, diff_documents, key_document, task_key

DOC = key_document(
    step="ort-quantize",
    version="1",
    plugin={"dist": "deploy-build", "version": "0.1.0"},
    params={"mode": "dynamic", "per_channel": True, "weight_type": "int8"},
    inputs={"model": "ab" * 32},
    toolchain={"onnx": "1.23.2", "onnxruntime": "1.32.0"},
    hardware={"device": "cpu"},
    model={"task": "feature-extraction", "trust_remote_code": False, "shapes": {"batch": [1]}},
)


def test_golden_key() -> None:
    # An accidental change of the key document's shape or of canonical JSON fails here.
    # If the change is deliberate, bump KEY_SCHEMA and update this literal.
    assert KEY_SCHEMA == 1
    assert task_key(DOC) == "55003c49e4a93bf2ef71f03038e670b205f53f6d1ee167d3ff2c6f87d66c2718"


def test_canonical_json_is_order_independent_and_rejects_nan() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == canonical_json({"a": [1, 2], "b": 1})
    import pytest

    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_key_changes_with_each_field() -> None:
    base = task_key(DOC)
    for field, value in [("version", "2"), ("params", {"mode": "static"}), ("inputs", {"model": "cd" * 32}),
                         ("toolchain", {"onnxruntime": "1.33.0"}), ("hardware", {"device": "cuda"}),
                         ("plugin", {"dist": "x", "version": "1"})]:
        assert task_key({**DOC, field: value}) != base, field


class _Index(dict):  # the stat cache needs get/set only
    def set(self, key, value) -> None:
        self[key] = value


def test_real_key_documents_hold_no_paths_hosts_or_threads(tmp_path) -> None:
    """Key documents built from a real recipe, in two different folders: identical keys."""
    import platform
    import shutil

    from conftest import FAKE_RECIPE, FIXTURES

    from orchestrator.graph import compile_graph
    from orchestrator.plan import document, resolve_sources
    from orchestrator.recipe import load_recipe
    from orchestrator.sources import StatCache

    keys = []
    for where in ("one", "two with space"):
        root = tmp_path / where
        (root / "model").mkdir(parents=True)
        (root / "model" / "w.bin").write_bytes(b"w")
        shutil.copy(FIXTURES / "fake_steps.py", root)
        (root / "r.yaml").write_text(FAKE_RECIPE)
        graph = compile_graph([load_recipe(root / "r.yaml")])
        sources = resolve_sources(graph, StatCache(_Index()))
        task = graph.tasks()[0]
        doc = document(task, {"model": sources[task.inputs["model"][0]].blob.digest})
        text = canonical_json(doc)
        for leak in (str(tmp_path), where, platform.node(), "threads"):
            assert leak not in text
        keys.append(task_key(doc))
    assert keys[0] == keys[1]


def test_diff_documents_names_what_changed() -> None:
    new = {**DOC, "params": {**DOC["params"], "per_channel": False},
           "toolchain": {**DOC["toolchain"], "onnxruntime": "1.33.0"}, "version": "2",
           "inputs": {"model": "cd" * 32}}
    assert diff_documents(DOC, new) == [
        "step version changed (1 -> 2)",
        "param changed: per_channel true -> false",
        "input changed: model",
        "toolchain changed: onnxruntime 1.32.0 -> 1.33.0",
    ]
