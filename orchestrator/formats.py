"""Artifact formats: what a step's input or output holds.

Every step declares the formats it accepts for its ``model`` input (``input_formats``) and the
format of each output (``output_formats``). A recipe's chain is checked when it loads (each step
must accept what the step before it gives), and each output is validated by its format right after
its step runs, before anything is cached: an empty or unparsable ``model.onnx`` fails the step that
wrote it, not the next one.

Formats are open: a plugin may use a name of its own (then only equal names match) and may
register a validator for it with ``register_format``. ``any`` in ``input_formats`` accepts every
format.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HF_MODEL = "hf-model"
ONNX = "onnx"
OPENVINO_IR = "openvino-ir"
TORCHSCRIPT = "torchscript"
TENSORRT_ENGINE = "tensorrt-engine"
TENSORRT_TIMING_CACHE = "tensorrt-timing-cache"
TFLITE = "tflite"
TEXT = "text"
ANY = "any"
# what the runtime layer (parity, benchmark) can open and run
ENGINES = (HF_MODEL, ONNX, OPENVINO_IR, TORCHSCRIPT, TENSORRT_ENGINE, TFLITE)
# formats of the inputs the engine provides itself (not the previous step's output)
FIXED_INPUTS = {"source": HF_MODEL, "samples": TEXT, "labelled": TEXT,
                "reference": "parity-reference"}

Validator = Callable[[Path], "str | None"]


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    validate: Validator | None = None


def _nonempty_file(path: Path) -> str | None:
    if not path.is_file():
        return "it is not a file"
    if path.stat().st_size == 0:
        return "it is empty (0 bytes)"
    return None


def _onnx(path: Path) -> str | None:
    problem = _nonempty_file(path)
    if problem:
        return problem
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # a protobuf parse error has no stable type
        return f"it does not parse as ONNX ({type(e).__name__}: {str(e)[:200]})"
    if not proto.graph.node or not proto.graph.output:
        return "its graph has no nodes or no outputs"
    return None


def _openvino_ir(path: Path) -> str | None:
    import xml.etree.ElementTree as ET

    if not path.is_dir():
        return "it is not a folder"
    xmls = sorted(path.glob("*.xml"))
    if len(xmls) != 1:
        return f"it must hold one *.xml file, found {[x.name for x in xmls]}"
    xml = xmls[0]
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as e:
        return f"{xml.name} does not parse as XML ({e})"
    if root.tag != "net":
        return f"{xml.name} is not an OpenVINO IR (root element <{root.tag}>, expected <net>)"
    has_weights = any(layer.get("type") == "Const" for layer in root.iter("layer"))
    bin_file = xml.with_suffix(".bin")
    if has_weights and (not bin_file.is_file() or bin_file.stat().st_size == 0):
        return f"{bin_file.name} (the weights of {xml.name}) is missing or empty"
    return None


def _hf_model(path: Path) -> str | None:
    config = path / "config.json"
    if not path.is_dir() or not config.is_file():
        return "it is not a Hugging Face model folder (no config.json)"
    try:
        json.loads(config.read_text())
    except (ValueError, OSError) as e:
        return f"config.json does not parse ({e})"
    return None


def _torchscript(path: Path) -> str | None:
    problem = _nonempty_file(path)
    if problem:
        return problem
    import zipfile

    if not zipfile.is_zipfile(path):
        return "it is not a TorchScript archive (torch.jit.save writes a zip file)"
    return None


def _tensorrt_engine(path: Path) -> str | None:
    if not path.is_dir():
        return "it is not a folder"
    plan, about = path / "model.plan", path / "engine.json"
    problem = _nonempty_file(plan)
    if problem:
        return f"model.plan: {problem}"
    try:
        json.loads(about.read_text())
    except (ValueError, OSError) as e:
        return f"engine.json (the engine's build facts) is missing or does not parse ({e})"
    return None


def _tflite(path: Path) -> str | None:
    problem = _nonempty_file(path)
    if problem:
        return problem
    with path.open("rb") as f:
        head = f.read(8)
    if head[4:8] != b"TFL3":
        return "it is not a LiteRT/TFLite flatbuffer (no TFL3 identifier)"
    return None


FORMATS: dict[str, Format] = {
    HF_MODEL: Format(HF_MODEL, "a Hugging Face model folder (config.json, weights, tokenizer)",
                     _hf_model),
    ONNX: Format(ONNX, "one ONNX model file", _onnx),
    OPENVINO_IR: Format(OPENVINO_IR, "an OpenVINO IR folder (model.xml + model.bin)", _openvino_ir),
    TORCHSCRIPT: Format(TORCHSCRIPT, "a TorchScript archive (torch.jit.save)", _torchscript),
    TENSORRT_ENGINE: Format(TENSORRT_ENGINE, "a TensorRT engine folder (model.plan: a serialized "
                            "engine for one GPU type; engine.json: how it was built)",
                            _tensorrt_engine),
    TENSORRT_TIMING_CACHE: Format(TENSORRT_TIMING_CACHE, "a TensorRT timing cache (serialized)",
                                  _nonempty_file),
    TFLITE: Format(TFLITE, "a LiteRT (TensorFlow Lite) flatbuffer, static shapes", _tflite),
    TEXT: Format(TEXT, "a text file"),
    "parity-reference": Format("parity-reference", "tokenized samples and PyTorch outputs (.npy)"),
    ANY: Format(ANY, "anything (accepted as input only)"),
}


def register_format(name: str, description: str, validate: Validator | None = None) -> None:
    """Declare a format of a plugin's own, optionally with a validator (path -> problem or None)
    that runs on every output of that format before it is cached."""
    existing = FORMATS.get(name)
    if existing is not None and existing.validate is not validate:
        raise ValueError(f"format {name!r} is already registered ({existing.description})")
    FORMATS[name] = Format(name, description, validate)


def accepts(accepted: tuple[str, ...], given: str) -> bool:
    return ANY in accepted or given in accepted or given == ANY


def validate_output(fmt: str, path: Path) -> str | None:
    """Why the output at path is not a valid ``fmt``, or None. Unknown formats are not checked
    beyond existing."""
    if not path.exists():
        return "it was not written"
    f = FORMATS.get(fmt)
    return f.validate(path) if f is not None and f.validate is not None else None
