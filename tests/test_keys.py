from orchestrator.hashing import canonical_json
from orchestrator.plan.keys import KEY_SCHEMA, diff_documents, key_document, task_key

DOC = key_document(
    step="ort-quantize",
    version="1",
    plugin={"dist": "deploy-build", "version": "0.1.0"},
    code={"orchestrator.steps.ort_quantize": "0123456789abcdef"},
    params={"mode": "dynamic", "per_channel": True, "weight_type": "int8"},
    inputs={"model": "ab" * 32},
    toolchain={"onnx": "1.23.2", "onnxruntime": "1.32.0"},
    hardware={"device": "cpu"},
    model={"task": "feature-extraction", "trust_remote_code": False, "shapes": {"batch": [1]}},
)


def test_golden_key() -> None:
    # An accidental change of the key document's shape or of canonical JSON fails here.
    # If the change is deliberate, bump KEY_SCHEMA and update this literal.
    assert KEY_SCHEMA == 3
    assert task_key(DOC) == "c6cbefd7cdd98dded31c7d12ffc4d2804d3afe13a4ec2d804854e42ca33b8f18"


def test_canonical_json_is_order_independent_and_rejects_nan() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == canonical_json({"a": [1, 2], "b": 1})
    import pytest

    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_key_changes_with_each_field() -> None:
    base = task_key(DOC)
    for field, value in [("version", "2"), ("params", {"mode": "static"}), ("inputs", {"model": "cd" * 32}),
                         ("toolchain", {"onnxruntime": "1.33.0"}), ("hardware", {"device": "cuda"}),
                         ("plugin", {"dist": "x", "version": "1"}),
                         ("code", {"orchestrator.steps.ort_quantize": "fedcba9876543210"})]:
        assert task_key({**DOC, field: value}) != base, field


class _Index(dict):  # the stat cache needs get/set only
    def set(self, key, value) -> None:
        self[key] = value


def test_real_key_documents_hold_no_paths_hosts_or_threads(tmp_path) -> None:
    """Key documents built from a real recipe, in two different folders: identical keys."""
    import platform
    import shutil

    from conftest import FAKE_RECIPE, FIXTURES

    from orchestrator.plan import document, resolve_sources
    from orchestrator.plan.graph import compile_graph
    from orchestrator.plan.sources import StatCache
    from orchestrator.recipe import load_recipe

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


def test_a_builtin_step_key_covers_its_code_and_the_helpers_it_runs_with() -> None:
    from orchestrator.registry.code import builtin_code, imported_names

    code = builtin_code("orchestrator.steps.parity")
    assert {"orchestrator.steps.parity", "orchestrator.runtime.engines",
            "orchestrator.runtime.hf"} <= set(code)
    assert "orchestrator.step" not in code  # the contract itself is not the step's code
    assert imported_names("from a.b import (c,\n    d as e)\nimport x.y, z\n") == {
        "a.b", "a.b.c", "a.b.d", "x.y", "z"}
    # one bare import per line: the next line's import is never swallowed by the one before it
    assert imported_names("from a import b\nfrom c.d import e, f\n\nfrom g import h\n") == {
        "a", "a.b", "c.d", "c.d.e", "c.d.f", "g", "g.h"}
    assert "orchestrator.steps.checks" in code
    old = {**DOC, "code": {"orchestrator.runtime.engines": "1" * 16, "orchestrator.runtime.hf": "2" * 16}}
    new = {**DOC, "code": {"orchestrator.runtime.engines": "3" * 16, "orchestrator.runtime.hf": "2" * 16}}
    assert diff_documents(old, new) == ["code changed: orchestrator.runtime.engines"]


def test_editing_a_helper_module_beside_a_plugin_rebuilds(project, capsys) -> None:
    (project.root / "helper_text.py").write_text("SUFFIX = '?'\n")
    (project.root / "uses_helper.py").write_text(
        "from helper_text import SUFFIX\n"
        "from orchestrator.step import Step\n"
        "class UsesHelper(Step):\n    name = 'uses-helper'\n    version = '1'\n"
        "    outputs = {'model': 'm.txt'}\n"
        "    input_formats = {'model': ('any',)}\n    output_formats = {'model': 'text'}\n"
        "    def run(self, ctx):\n"
        "        import helper_text\n"
        "        ctx.output('model').write_text('x' + helper_text.SUFFIX)\n        return {}\n")
    r = project.recipe("plugins: [uses_helper.py]\nmodel: {source: ./model}\n"
                       "targets:\n  t: {steps: [uses-helper: {}]}\n")
    assert project.build_json(r, capsys)["rc"] == 0
    assert (project.out / "r/t/m.txt").read_text() == "x?"
    (project.root / "helper_text.py").write_text("SUFFIX = '!'\n")
    s = project.build_json(r, capsys)
    assert s["tasks"][0]["status"] == "run"
    assert s["tasks"][0]["reasons"] == ["code changed: helper_text"]
    assert (project.out / "r/t/m.txt").read_text() == "x!"


def test_tasks_that_tokenize_key_the_tokenizer_libraries(project) -> None:
    from orchestrator.plan import task_toolchain
    from orchestrator.plan.graph import compile_graph
    from orchestrator.recipe import load_recipe

    (project.root / "s.txt").write_text("hello world\n")
    r = project.recipe("model: {source: ./model}\ninputs: {samples: s.txt}\ntargets:\n"
                       "  s: {steps: [export-onnx: {}, ort-quantize: {mode: static}]}\n"
                       "  d: {steps: [export-onnx: {}, ort-quantize: {mode: dynamic}],"
                       " checks: {parity: {}}}\n")
    graph = compile_graph([load_recipe(r)])
    chains = {(t.step, t.params.get("mode"), t.reference): task_toolchain(t) for t in graph.tasks()}
    assert {"tokenizers", "transformers"} <= set(chains[("ort-quantize", "static", False)])
    assert "tokenizers" not in chains[("ort-quantize", "dynamic", False)]
    assert {"tokenizers", "transformers"} <= set(chains[("parity", None, True)])  # the reference
    assert chains[("parity", None, False)] == ("onnxruntime",)  # only the engine's runtime


def test_a_toolchain_that_is_not_installed_is_refused_unless_optional(project, capsys) -> None:
    step = ("from orchestrator.step import Step\n"
            "class NeedsTrt(Step):\n    name = 'needs-trt'\n    version = '1'\n"
            "    toolchain = ('tensorrt-not-here',)\n{optional}"
            "    outputs = {{'model': 'engine/'}}\n"
            "    input_formats = {{'model': ('any',)}}\n    output_formats = {{'model': 'tensorrt-engine'}}\n"
            "    def run(self, ctx):\n        return {{}}\n")
    (project.root / "trt.py").write_text(step.format(optional=""))
    r = project.recipe("plugins: [trt.py]\nmodel: {source: ./model}\n"
                       "targets:\n  t: {steps: [needs-trt: {}]}\n")
    capsys.readouterr()
    assert project.run(str(r), "--dry-run") == 1
    assert "its toolchain ['tensorrt-not-here'] is not installed" in capsys.readouterr().err
    (project.root / "trt.py").write_text(
        step.format(optional="    optional_toolchain = ('tensorrt-not-here',)\n"))
    assert project.run(str(r), "--dry-run") == 0


GOLDEN_STEP = '''\
from typing import Any

from pydantic import BaseModel, ConfigDict

import golden_helper
from orchestrator.step import Step, StepContext


class GoldenParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: int = 3
    name: str = "x"


class Golden(Step):
    name = "golden-step"
    version = "7"
    Params = GoldenParams
    inputs = ("model", "samples")
    outputs = {"model": "model.txt"}
    input_formats = {"model": ("any",)}
    output_formats = {"model": "text"}
    toolchain = ("pyyaml",)
    hardware_keys = ("device",)
    machine_keys = ("cpu_count",)

    def run(self, ctx: StepContext) -> dict[str, Any]:
        return golden_helper.noop()
'''


def _golden_document(tmp_path) -> dict:
    """plan.document of a real task compiled from a recipe: code digests, toolchain versions
    and machine facts (which change with a step edit, the environment or the machine) replaced
    by placeholders, everything else as the key holds it."""
    from orchestrator.plan import document, resolve_sources
    from orchestrator.plan.graph import compile_graph
    from orchestrator.plan.sources import StatCache
    from orchestrator.recipe import load_recipe

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"w")
    (tmp_path / "s.txt").write_text("one sample\n")
    (tmp_path / "golden_step.py").write_text(GOLDEN_STEP)
    (tmp_path / "golden_helper.py").write_text("def noop():\n    return {}\n")
    (tmp_path / "r.yaml").write_text(
        "name: g\nplugins: [golden_step.py]\nmodel: {source: ./model}\n"
        "inputs: {samples: s.txt}\ntargets:\n  t: {steps: [golden-step: {level: 5}]}\n")
    graph = compile_graph([load_recipe(tmp_path / "r.yaml")])
    sources = resolve_sources(graph, StatCache(_Index()))
    task = graph.tasks()[0]
    doc = document(task, {n: sources[node].blob.digest for n, (node, _) in task.inputs.items()})
    doc["code"] = dict.fromkeys(doc["code"], "<code>")
    doc["plugin"]["version"] = "<code>"  # a plugin file's version is its digest
    doc["toolchain"] = dict.fromkeys(doc["toolchain"], "<version>")
    doc["machine"] = dict.fromkeys(doc["machine"], "<fact>")
    return doc


GOLDEN_DOCUMENT = {
    "schema": 3,
    "step": "golden-step",
    "version": "7",
    "plugin": {"dist": "file:golden_step.py", "version": "<code>"},
    "code": {"golden_helper": "<code>"},
    "params": {"level": 5, "name": "x"},
    "inputs": {"model": "fa781b7291135d8d44e3eb82188616b6717029b709449c0a08768317a6e73d18",
               "samples": "7a4e0e54fb8eda8361e4c51692345e9df4fe2546a264c17713a3d8314a289bbd"},
    "toolchain": {"pyyaml": "<version>", "tokenizers": "<version>", "transformers": "<version>"},
    "hardware": {"device": "cpu"},
    "model": {"task": "feature-extraction", "trust_remote_code": False},
    "machine": {"cpu_count": "<fact>"},
}


def test_golden_key_of_a_real_document(tmp_path) -> None:
    # plan.document's shape: a change here changes every key. If it is deliberate, bump
    # KEY_SCHEMA and update both literals.
    doc = _golden_document(tmp_path)
    assert doc == GOLDEN_DOCUMENT
    assert task_key(doc) == "66bc70480afaffc4b5b5a85588408f11e98982733a3e7d9c809fb25fecada415"


def test_dist_versions_match_importlib_metadata() -> None:
    """The quick lookup by .dist-info folder name gives what importlib.metadata gives."""
    from importlib.metadata import distributions

    from orchestrator.plan import keys

    names = sorted({d.metadata["Name"] for d in distributions() if d.metadata["Name"]})
    assert len(names) > 20
    for name in names:
        keys.dist_version.cache_clear()
        assert keys.dist_version(name) == version_of(name), name
    assert keys.dist_version("surely-not-a-package-xyz") == "not-installed"


def version_of(name: str) -> str:
    from importlib.metadata import version

    return version(name)
