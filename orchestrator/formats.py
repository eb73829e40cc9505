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
    folder: bool | None = None  # True: a folder (output names end in '/'), False: a file, None: either


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
                     _hf_model, folder=True),
    ONNX: Format(ONNX, "one ONNX model file", _onnx, folder=False),
    OPENVINO_IR: Format(OPENVINO_IR, "an OpenVINO IR folder (model.xml + model.bin)", _openvino_ir,
                        folder=True),
    TORCHSCRIPT: Format(TORCHSCRIPT, "a TorchScript archive (torch.jit.save)", _torchscript,
                        folder=False),
    TENSORRT_ENGINE: Format(TENSORRT_ENGINE, "a TensorRT engine folder (model.plan: a serialized "
                            "engine for one GPU type; engine.json: how it was built)",
                            _tensorrt_engine, folder=True),
    TENSORRT_TIMING_CACHE: Format(TENSORRT_TIMING_CACHE, "a TensorRT timing cache (serialized)",
                                  _nonempty_file, folder=False),
    TFLITE: Format(TFLITE, "a LiteRT (TensorFlow Lite) flatbuffer, static shapes", _tflite,
                   folder=False),
    TEXT: Format(TEXT, "a text file", folder=False),
    "parity-reference": Format("parity-reference", "tokenized samples and PyTorch outputs (.npy)",
                               folder=True),
    ANY: Format(ANY, "anything (accepted as input only)"),
}


def register_format(name: str, description: str, validate: Validator | None = None,
                    folder: bool | None = None) -> None:
    """Declare a format of a plugin's own, optionally with a validator (path -> problem or None)
    that runs on every output of that format before it is cached, and whether it is a folder
    (``True``: output names end in '/'), a file (``False``) or either (``None``)."""
    existing = FORMATS.get(name)
    if existing is not None and existing.validate is not validate:
        raise ValueError(f"format {name!r} is already registered ({existing.description})")
    FORMATS[name] = Format(name, description, validate, folder)


def name_problem(name: str) -> str | None:
    """Why a format name a step declares looks like a typo: unknown, and close to a known one (a
    name of a plugin's own far from every known one is taken as a new format)."""
    import difflib

    if name in FORMATS:
        return None
    close = difflib.get_close_matches(name, list(FORMATS), n=1, cutoff=0.75)
    if not close:
        return None
    return (f"format {name!r} is unknown; did you mean {close[0]!r}? (a format of your own this "
            f"close to a built-in one must be declared first: orchestrator.formats."
            f"register_format({name!r}, 'what it holds'))")


def shape_problem(output: str, filename: str, fmt: str) -> str | None:
    """Why an output declared as a file (or a folder: a name ending in '/') cannot hold ``fmt``."""
    known = FORMATS.get(fmt)
    if known is None or known.folder is None:
        return None
    if known.folder and not filename.endswith("/"):
        return (f"output {output!r} is the file {filename!r} but its format {fmt!r} is a folder "
                f"({known.description}): declare it as {filename.rstrip('/') + '/'!r}")
    if not known.folder and filename.endswith("/"):
        return (f"output {output!r} is the folder {filename!r} but its format {fmt!r} is a file "
                f"({known.description}): declare it as {filename.rstrip('/')!r}")
    return None


def accepts(accepted: tuple[str, ...], given: str) -> bool:
    return ANY in accepted or given in accepted or given == ANY


def validate_output(fmt: str, path: Path) -> str | None:
    """Why the output at path is not a valid ``fmt``, or None. Unknown formats are not checked
    beyond existing."""
    if not path.exists():
        return "it was not written"
    f = FORMATS.get(fmt)
    return f.validate(path) if f is not None and f.validate is not None else None
