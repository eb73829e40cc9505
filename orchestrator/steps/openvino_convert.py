"""openvino-convert: an ONNX file (or, with ``source: pytorch``, the Hugging Face folder) -> an
OpenVINO IR folder (model.xml + model.bin) with dynamic batch and sequence axes.

The output is byte-deterministic: the nodes OpenVINO names from a process-wide counter
(``Constant_4531``) are renamed by their position in the graph (see ``normalize_names``).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.runtime import hf
from orchestrator.runtime.engines import model_file
from orchestrator.step import Resources, Step, StepContext

AUTO_NAME = re.compile(r"^([A-Z][A-Za-z0-9]*)_\d+$")  # OpenVINO default node names
QUANTIZED_TYPES = ("i8", "u8", "i4", "u4", "nf4", "f4e2m1")


def telemetry_opt_out() -> None:
    """Stop OpenVINO/NNCF telemetry (call before importing openvino or nncf).

    openvino_telemetry runs on ``import openvino``, on every ``convert_model`` and on
    ``import nncf``, and writes ~/intel/openvino_ga_cid and ~/intel/stats unless ``CI`` is "true"
    (OpenVINO and NNCF both create it with ``disable_in_ci=True``). ``NNCF_CI=1`` alone is not
    enough: NNCF creates the telemetry object (and its files) before it checks that variable.
    """
    if os.environ.get("CI", "").lower() != "true":
        os.environ["CI"] = "true"
    os.environ.setdefault("NNCF_CI", "1")


class OpenvinoConvertParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Literal["onnx", "pytorch"] = Field(
        "onnx", description="'onnx': convert input 'model' (an ONNX file, e.g. from export-onnx); "
        "'pytorch': convert the PyTorch model of the Hugging Face folder (input 'source') directly.")
    compress_to_fp16: bool = Field(
        False, description="Store weights as fp16 (half the size; OpenVINO computes in its own "
        "inference precision either way). False keeps fp32 weights.")


class OpenvinoConvert(Step[OpenvinoConvertParams]):
    name = "openvino-convert"
    version = "1"
    description = ("Convert an ONNX model (or the PyTorch model, source: pytorch) to OpenVINO IR "
                   "with dynamic batch and sequence axes.")
    inputs = ("model", "source")
    outputs = {"model": "ir/"}
    input_formats = {"model": ("onnx", "hf-model")}
    output_formats = {"model": "openvino-ir"}
    resources = Resources(cpu=1, memory_gb=4)
    # One toolchain for both paths (it is per class, not per param): the pytorch path traces the
    # model with torch and runs transformers' modelling code, so their versions change its output.
    # An ONNX conversion is rebuilt needlessly when torch/transformers change: a cache miss, never
    # a stale engine. nncf is not used here, so it stays out of this key.
    toolchain = ("openvino", "torch", "transformers")
    preload = ("torch", "transformers", "transformers.modeling_utils")

    def run(self, ctx: StepContext[OpenvinoConvertParams]) -> dict[str, Any]:
        telemetry_opt_out()
        import openvino as ov

        p: OpenvinoConvertParams = ctx.params
        if p.source == "pytorch":
            model = _from_pytorch(ctx)
        else:
            model = ov.convert_model(str(_onnx_file(ctx.input("model"))))
        make_dynamic(model)
        normalize_names(model)
        xml = ctx.output("model") / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=p.compress_to_fp16)
        saved = ov.Core().read_model(str(xml))
        return {"source": p.source, "compress_to_fp16": p.compress_to_fp16,
                **ir_summary(saved, xml.parent)}


def _onnx_file(path: Path) -> Path:
    hint = "; put export-onnx before openvino-convert, or set source: pytorch"
    if path.is_dir() and (path / "config.json").exists():
        raise ValueError(f"input model {path} is a Hugging Face folder, not an ONNX file{hint}")
    return model_file(path, ".onnx", hint)


def _from_pytorch(ctx: StepContext[OpenvinoConvertParams]) -> Any:
    import openvino as ov
    import torch

    torch.set_num_threads(max(1, ctx.threads))
    folder = ctx.input("source")
    model = hf.load_model(folder, ctx.model.task, ctx.model.trust_remote_code)
    _, enc = hf.example_inputs(folder, ctx.model.trust_remote_code)
    names = [n for n in hf.input_names() if n in enc]
    outs = hf.output_names(ctx.model.task)

    wrapper = hf.positional_wrapper(model, names, outs, always_tuple=True)
    with torch.no_grad():
        converted = ov.convert_model(wrapper, example_input=tuple(enc[n] for n in names))
    for port, name in zip(converted.inputs, names, strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(converted.outputs, outs, strict=True):
        port.get_tensor().set_names({name})
    return converted


def make_dynamic(model: Any) -> None:
    """Make axes 0 and 1 (batch, sequence) of every input of rank >= 2 dynamic; check they are."""
    from openvino import Dimension, PartialShape

    new: dict[str, Any] = {}
    for port in model.inputs:
        shape = port.get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() < 2:
            continue
        if shape[0].is_static or shape[1].is_static:
            dims = [Dimension() if i < 2 else shape[i] for i in range(shape.rank.get_length())]
            new[port.get_any_name()] = PartialShape(dims)
    if new:
        try:
            model.reshape(new)
        except RuntimeError as e:
            raise RuntimeError(f"cannot make inputs {sorted(new)} dynamic (batch, sequence): {e}; "
                               "export the ONNX model with dynamic axes (export-onnx does)") from e
    static = [f"{p.get_any_name()} {p.get_partial_shape()}" for p in model.inputs
              if p.get_partial_shape().rank.is_static and p.get_partial_shape().rank.get_length() >= 2
              and (p.get_partial_shape()[0].is_static or p.get_partial_shape()[1].is_static)]
    if static:
        raise RuntimeError(f"inputs still have static batch/sequence axes after conversion: "
                           f"{static}; export the model with dynamic axes")


def normalize_names(model: Any) -> None:
    """Rename nodes named from OpenVINO's process-wide counter (``Constant_4531``, also copied
    onto folded constants as ``Range_4940``; the number depends on what the process built
    before) to ``<Prefix>_<position in the graph>``, and the model (``Model15``) to ``Model``:
    the same graph then serializes to the same bytes in any process."""
    for i, op in enumerate(model.get_ordered_ops()):
        match = AUTO_NAME.match(op.get_friendly_name())
        if match:
            op.set_friendly_name(f"{match[1]}_{i}")
    if re.fullmatch(r"Model\d+", model.get_friendly_name()):
        model.set_friendly_name("Model")


def ir_summary(model: Any, folder: Path) -> dict[str, Any]:
    """Metrics of an IR: ops, weight bytes per element type, inputs/outputs, file sizes."""
    ops = list(model.get_ops())
    weight_bytes: Counter[str] = Counter()
    quantized = 0
    for op in ops:
        if op.get_type_name() != "Constant" or len(op.get_output_partial_shape(0)) < 2:
            continue
        etype = op.get_output_element_type(0)
        weight_bytes[etype.get_type_name()] += op.get_byte_size()
        quantized += etype.get_type_name() in QUANTIZED_TYPES
    types = Counter(op.get_type_name() for op in ops)
    return {
        "ops": len(ops),
        "fake_quantize": types.get("FakeQuantize", 0),
        "quantized_constants": quantized,
        "weight_precision": weight_bytes.most_common(1)[0][0] if weight_bytes else None,
        "weight_bytes": dict(sorted(weight_bytes.items())),
        "inputs": [p.get_any_name() for p in model.inputs],
        "input_shapes": {p.get_any_name(): str(p.get_partial_shape()) for p in model.inputs},
        "outputs": [p.get_any_name() for p in model.outputs],
        "size_bytes": sum(f.stat().st_size for f in folder.iterdir() if f.is_file()),
    }
