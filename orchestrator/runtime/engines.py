"""A small runtime layer shared by the checks: open an engine (PyTorch reference, ONNX Runtime,
OpenVINO IR or TorchScript) from a path, feed it a batch of numpy inputs, get the task's main
output (last_hidden_state or logits) back as float32 numpy.

Heavy imports (torch, onnxruntime, openvino) happen inside the functions that need them.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator import formats
from orchestrator.runtime import hf

QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
             "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention",
             "QGemm", "MatMulNBits", "QOrderedMatMul"}
_OV_INT = re.compile(r'element_type="(i8|u8|i4|u4)"')
_HF_WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")


class Engine:
    """One opened model. ``run`` feeds only the inputs the engine declares."""

    def __init__(self, runtime: str, input_names: list[str], fn: Callable[[dict[str, Any]], Any],
                 settings: dict[str, Any], finish: Callable[[], str | None] | None = None) -> None:
        self.runtime = runtime
        self.input_names = input_names
        self._fn = fn
        self._settings = settings
        self._finish = finish

    def run(self, batch: dict[str, Any]) -> Any:
        import numpy as np

        missing = [n for n in self.input_names if n not in batch]
        if missing:
            raise ValueError(f"{self.runtime} engine needs inputs {missing}; got {sorted(batch)}")
        out = self._fn({n: batch[n] for n in self.input_names})
        return np.asarray(out, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """Runtime settings worth recording next to the numbers they produced."""
        return dict(self._settings)

    def end_profiling(self) -> str | None:
        """The profile file of an ONNX Runtime session opened with a profile_dir (else None)."""
        return self._finish() if self._finish else None


def engine_kind(path: Path) -> str:
    """'pytorch', 'onnxruntime', 'openvino' or 'torchscript', from what the path holds."""
    if path.is_dir():
        has_config = (path / "config.json").is_file()
        if has_config and any(next(path.glob(g), None) for g in _HF_WEIGHTS):
            return "pytorch"
        if any(path.glob("*.xml")):
            return "openvino"
        if any(path.glob("*.onnx")):
            return "onnxruntime"
        if any(path.glob("*.pt")):
            return "torchscript"
        if any(path.glob("*.plan")):
            return "tensorrt"
        if has_config:
            return "pytorch"
    else:
        suffix = {".onnx": "onnxruntime", ".xml": "openvino", ".pt": "torchscript",
                  ".plan": "tensorrt", ".tflite": "litert"}
        if path.suffix in suffix:
            return suffix[path.suffix]
    raise ValueError(f"cannot tell what kind of model {path} is: expected a Hugging Face folder "
                     "(config.json), a *.onnx file, an OpenVINO IR (*.xml) or a TorchScript *.pt")


RUNTIME_TOOLCHAIN = {
    "onnxruntime": ("onnxruntime",),
    "openvino": ("openvino",),
    "torchscript": ("torch",),
    "pytorch": ("torch", "transformers"),
    "tensorrt": ("tensorrt",),
    "litert": ("ai-edge-litert",),
}


RUNTIME_BY_FORMAT = {
    formats.HF_MODEL: "pytorch",
    formats.ONNX: "onnxruntime",
    formats.OPENVINO_IR: "openvino",
    formats.TORCHSCRIPT: "torchscript",
    formats.TENSORRT_ENGINE: "tensorrt",
    formats.TFLITE: "litert",
}


def toolchain_for_format(fmt: str) -> tuple[str, ...]:
    """The packages that run an engine of this format (plan time: no file exists yet). A format
    the runtime layer does not know gets every runtime: never wrong, only less cached."""
    kind = RUNTIME_BY_FORMAT.get(fmt)
    if kind is None:
        return tuple(sorted({p for k, v in RUNTIME_TOOLCHAIN.items() if k not in ("tensorrt", "litert")
                             for p in v}))  # TensorRT and LiteRT run only their own format
    return RUNTIME_TOOLCHAIN[kind]


def model_file(path: Path, suffix: str, hint: str = "") -> Path:
    """The model file of an input: the path itself when it is a ``suffix`` file, else in the
    folder ``model<suffix>``, else its one ``*<suffix>`` file. ``hint`` ends the error: what to
    put before the step that wanted it."""
    if not path.is_dir():
        if path.suffix == suffix:
            return path
        raise ValueError(f"input model {path.name} is not a {suffix} file{hint}")
    if (path / f"model{suffix}").is_file():
        return path / f"model{suffix}"
    found = sorted(path.glob(f"*{suffix}"))
    if len(found) != 1:
        raise ValueError(f"expected one *{suffix} file in {path}, found "
                         f"{[f.name for f in found]}{hint}")
    return found[0]


def open_engine(path: Path, threads: int, precision_hint: str = "f32", *,
                task: str = "feature-extraction", trust_remote_code: bool = False,
                profile_dir: Path | None = None, device: str = "cpu") -> Engine:
    """Open the model at path with ``threads`` threads on ``device`` (the target's: ``cpu`` or
    ``cuda``). ``precision_hint`` is the OpenVINO INFERENCE_PRECISION_HINT (always set: on bf16
    CPUs the default silently is bf16); ``profile_dir`` turns on the ONNX Runtime profiler
    (ignored by the other runtimes)."""
    kind = engine_kind(path)
    threads = max(1, threads)
    output = hf.output_names(task)[0]
    if kind == "onnxruntime":
        return _open_ort(model_file(path, ".onnx"), threads, output, profile_dir,
                         device)
    if kind == "tensorrt":
        from orchestrator.runtime.trt import open_trt

        runtime, names, fn, settings = open_trt(model_file(path, ".plan"), output)
        return Engine(runtime, names, fn, settings)
    if kind == "litert":
        if device != "cpu":
            raise RuntimeError("LiteRT models are measured on the CPU (XNNPACK) here; give the "
                               "target hardware: {device: cpu}")
        from orchestrator.runtime.litert import open_litert

        return Engine(*open_litert(model_file(path, ".tflite"), threads))
    if device != "cpu" and kind == "openvino":
        raise RuntimeError("OpenVINO engines are measured on the CPU only; give the target "
                           "hardware: {device: cpu}")
    if kind == "openvino":
        return _open_ov(model_file(path, ".xml"), threads, precision_hint, output)
    if kind == "torchscript":
        return _open_ts(model_file(path, ".pt"), threads, output)
    return _open_torch(path, threads, task, trust_remote_code, output, device)


def torch_device(device: str) -> tuple[str, str | None]:
    """(the torch device to use, why it is not the one asked for): a cuda target's PyTorch
    reference runs on the GPU when this torch has CUDA, else on the CPU (the pinned torch is a
    CPU build) with the reason recorded."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return "cpu", f"torch {torch.__version__} has no usable CUDA: the reference ran on the CPU"
    return device, None


def _open_torch(path: Path, threads: int, task: str, trust_remote_code: bool,
                output: str, device: str = "cpu") -> Engine:
    import torch

    torch.set_num_threads(threads)
    where, why = torch_device(device)
    model = hf.load_model(path, task, trust_remote_code).float().to(where)  # fp32 reference
    accepted = set(inspect.signature(model.forward).parameters)
    names = [n for n in hf.input_names() if n in accepted]

    def fn(feed: dict[str, Any]) -> Any:
        with torch.inference_mode():
            out = model(**{k: torch.from_numpy(v).to(where) for k, v in feed.items()},
                        return_dict=True)
        return out[output].float().cpu().numpy()

    settings = {"runtime": "pytorch", "version": torch.__version__, "threads": threads,
                "attn_implementation": "eager", "dtype": "float32", "device": where}
    if why:
        settings["device_note"] = why
    return Engine("pytorch", names, fn, settings)


def _open_ts(path: Path, threads: int, output: str) -> Engine:
    import torch

    torch.set_num_threads(threads)
    jit: Any = torch.jit  # untyped in torch's stubs
    module = jit.load(str(path), map_location="cpu").eval()
    graph_inputs = [re.sub(r"\.\d+$", "", i.debugName()) for i in list(module.graph.inputs())[1:]]
    known = hf.input_names()
    names = graph_inputs if all(n in known for n in graph_inputs) else known[: len(graph_inputs)]

    def fn(feed: dict[str, Any]) -> Any:
        with torch.inference_mode():
            out = module(*(torch.from_numpy(feed[n]) for n in names))
        if isinstance(out, dict):
            out = out[output]
        elif isinstance(out, list | tuple):
            out = out[0]
        return out.float().numpy()

    settings = {"runtime": "torchscript", "version": torch.__version__, "threads": threads}
    return Engine("torchscript", names, fn, settings)


# a cuda target's ONNX engine: TensorRT's provider first where present, then CUDA's
CUDA_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def ort_providers(available: list[str], device: str) -> list[str]:
    """The providers for a session on ``device``; a cuda device with no GPU provider is an
    error that says what to install."""
    if device != "cuda":
        return ["CPUExecutionProvider"]
    gpu = [p for p in CUDA_PROVIDERS if p in available]
    if not gpu:
        raise RuntimeError(f"a cuda target's ONNX engine needs ONNX Runtime's CUDA or TensorRT "
                           f"provider; this onnxruntime has {available}: install the gpu extra "
                           "(pip install 'deploy-build[gpu]', which brings onnxruntime-gpu)")
    return [*gpu, "CPUExecutionProvider"]


def _open_ort(path: Path, threads: int, output: str, profile_dir: Path | None,
              device: str = "cpu") -> Engine:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if profile_dir is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_dir / "ort-profile")
    providers = ort_providers(ort.get_available_providers(), device)
    sess = ort.InferenceSession(str(path), so, providers=providers)
    types = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32}
    dtypes = {i.name: types.get(i.type, np.int64) for i in sess.get_inputs()}
    outs = [o.name for o in sess.get_outputs()]
    out_name = output if output in outs else outs[0]

    def fn(feed: dict[str, Any]) -> Any:
        return sess.run([out_name], {k: v.astype(dtypes[k], copy=False)
                                     for k, v in feed.items()})[0]

    settings = {"runtime": "onnxruntime", "version": ort.__version__, "threads": threads,
                "inter_op_threads": 1, "execution_mode": "sequential",
                "providers": sess.get_providers()}
    finish = sess.end_profiling if profile_dir is not None else None
    return Engine("onnxruntime", list(dtypes), fn, settings, finish)


def _open_ov(path: Path, threads: int, precision_hint: str, output: str) -> Engine:
    import numpy as np
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision_hint,
              "PERFORMANCE_HINT": "LATENCY"}
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    ports = {p.get_any_name(): p for p in compiled.inputs}
    dtypes = {n: p.get_element_type().to_dtype() for n, p in ports.items()}
    out_port = next((o for o in compiled.outputs if output in o.get_names()), compiled.outputs[0])

    def fn(feed: dict[str, Any]) -> Any:
        request.infer({k: v.astype(dtypes[k], copy=False) for k, v in feed.items()})
        return np.array(request.get_tensor(out_port).data, dtype=np.float32, copy=True)

    settings = {"runtime": "openvino", "version": ov.get_version(), "threads": threads,
                "device": "CPU", "precision_hint": precision_hint,
                "inference_precision": _ov_type(compiled.get_property("INFERENCE_PRECISION_HINT")),
                "performance_hint": "LATENCY"}
    return Engine("openvino", list(ports), fn, settings)


def detect_precision(path: Path) -> str:
    """'fp32', 'fp16' or 'int8' (any integer quantization) from what the model file holds."""
    kind = engine_kind(path)
    if kind == "onnxruntime":
        import onnx

        proto = onnx.load(str(model_file(path, ".onnx")), load_external_data=False)
        ops = {n.op_type for n in proto.graph.node}
        if ops & QUANT_OPS or any(op.startswith("QLinear") for op in ops):
            return "int8"
        if any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer):
            return "fp16"
        return "fp32"
    if kind == "openvino":
        text = model_file(path, ".xml").read_text(errors="replace")
        if "FakeQuantize" in text or _OV_INT.search(text):
            return "int8"
        # f16 Constants in an IR are compressed storage (save_model's default): the CPU plugin
        # decompresses them and computes in the inference precision, so they count as fp32.
        return "fp32"
    if kind == "litert":
        return _litert_precision(path)
    if kind == "tensorrt":  # precision comes from the ONNX graph it was built from (engine.json)
        import json

        about = (path if path.is_dir() else path.parent) / "engine.json"
        return str(json.loads(about.read_text()).get("precision", "fp32"))
    # Hugging Face folders and TorchScript: the PyTorch engine runs them in fp32.
    return "fp32"


def _ov_type(value: Any) -> str:
    """'f32' for an openvino Type (the effective INFERENCE_PRECISION_HINT)."""
    return str(value.to_string()) if hasattr(value, "to_string") else str(value)


def _litert_precision(path: Path) -> str:
    """'int8' when the flatbuffer holds int8 tensors, 'fp16' for float16 ones, else 'fp32'."""
    from ai_edge_litert.interpreter import Interpreter

    types = {str(d["dtype"]) for d in Interpreter(model_path=str(path)).get_tensor_details()}
    if any("int8" in t for t in types):
        return "int8"
    return "fp16" if any("float16" in t for t in types) else "fp32"
