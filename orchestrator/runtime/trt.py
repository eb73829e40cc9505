"""TensorRT: build a serialized engine from ONNX, and run one (the checks' runtime for
``tensorrt-engine``). Written against TensorRT's documented Python API (10.x and 11.x) and
cuda-python's runtime bindings; neither is installable on the machines this project was developed
on (docs/toolchain.md), so this module is exercised only by the ``gpu``-marked tests.

The optimization profile is a pure function of the recipe's shapes (``profile``), tested anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def profile(batch: list[int], sequence: list[int]) -> dict[str, list[int]]:
    """One optimization profile for every [batch, sequence] input: min = smallest batch and
    sequence, opt = smallest batch at the longest sequence (the latency point), max = largest."""
    if not batch or not sequence:
        raise ValueError("a TensorRT profile needs at least one batch and one sequence length")
    return {"min": [min(batch), min(sequence)], "opt": [min(batch), max(sequence)],
            "max": [max(batch), max(sequence)]}


def _check(result: Any, what: str) -> Any:
    """cuda-python calls return (error, value...); raise on an error, return the value."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA {what} failed: {err}")
    return rest[0] if len(rest) == 1 else rest


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def build_engine(onnx_path: Path, prof: dict[str, list[int]], workspace_mb: int,
                 optimization_level: int, log: Callable[[str], None]) -> tuple[bytes, bytes]:
    """(serialized engine, serialized timing cache). Strongly typed where TensorRT has it:
    precision comes from the ONNX graph (TensorRT 11 has no fp16/int8 builder flags)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse the ONNX model: {errors} (an ONNX Runtime-"
                           "optimized graph has ORT-only fused ops: build from export-onnx or "
                           "ort-quantize {mode: fp16} instead)")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.builder_optimization_level = optimization_level
    config.set_timing_cache(config.create_timing_cache(b""), False)
    opt = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        opt.set_shape(tensor.name, prof["min"], prof["opt"], prof["max"])
        log(f"profile {tensor.name}: min {prof['min']} opt {prof['opt']} max {prof['max']}")
    config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT built no engine (see the log above); try a larger "
                           "workspace_mb or a lower optimization_level")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


def open_trt(plan: Path, output: str) -> tuple[str, list[str], Callable[[dict[str, Any]], Any],
                                                dict[str, Any]]:
    """(runtime, input names, run function, settings) for a serialized engine on CUDA device 0
    (the task's CUDA_VISIBLE_DEVICES). Device buffers are kept per input shape."""
    import numpy as np
    import tensorrt as trt

    cudart = _cudart()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    if engine is None:
        raise RuntimeError(f"TensorRT cannot load {plan}: engines only run on the GPU type and "
                           "TensorRT version they were built with")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    out_name = output if output in outputs else outputs[0]
    stream = _check(cudart.cudaStreamCreate(), "stream")
    buffers: dict[tuple[Any, ...], dict[str, tuple[int, Any]]] = {}
    h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost

    def fn(feed: dict[str, Any]) -> Any:
        arrays = {n: np.ascontiguousarray(feed[n], dtype=trt.nptype(engine.get_tensor_dtype(n)))
                  for n in inputs}
        for n, a in arrays.items():
            context.set_input_shape(n, a.shape)
        shape_key = tuple(a.shape for a in arrays.values())
        if shape_key not in buffers:
            bufs = {}
            for n in names:
                shape = tuple(context.get_tensor_shape(n))
                host = np.empty(shape, dtype=trt.nptype(engine.get_tensor_dtype(n)))
                bufs[n] = (_check(cudart.cudaMalloc(max(1, host.nbytes)), "malloc"), host)
            buffers[shape_key] = bufs
        bufs = buffers[shape_key]
        for n, (ptr, _) in bufs.items():
            context.set_tensor_address(n, int(ptr))
        for n, a in arrays.items():
            _check(cudart.cudaMemcpy(bufs[n][0], a.ctypes.data, a.nbytes, h2d), "copy in")
        if not context.execute_async_v3(int(stream)):
            raise RuntimeError("TensorRT execution failed")
        _check(cudart.cudaStreamSynchronize(stream), "synchronize")
        ptr, host = bufs[out_name]
        _check(cudart.cudaMemcpy(host.ctypes.data, ptr, host.nbytes, d2h), "copy out")
        return host.astype(np.float32)

    settings = {"runtime": "tensorrt", "version": trt.__version__, "device": "cuda",
                "output": out_name}
    return "tensorrt", inputs, fn, settings
