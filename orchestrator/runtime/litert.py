"""The LiteRT (TensorFlow Lite) interpreter as a check runtime: ai-edge-litert, CPU, XNNPACK.

A converted model has one static [batch, sequence] signature with int32 inputs (litert-convert):
a batch of other shape runs row by row, each row padded to the static sequence with the mask at 0
(masked positions change nothing the model computes for the real tokens) and the output cropped
back to the batch's length.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def open_litert(path: Path, threads: int) -> tuple[str, list[str], Callable[[dict[str, Any]], Any],
                                                   dict[str, Any]]:
    import ai_edge_litert
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    runner = interp.get_signature_runner()
    details = runner.get_input_details()
    names = sorted(details)  # args_0: input_ids, args_1: attention_mask (litert-convert's order)
    rows_static, seq_static = (int(x) for x in details[names[0]]["shape"])
    out_name = sorted(runner.get_output_details())[0]
    feeds = ("input_ids", "attention_mask")

    def one(ids: Any, mask: Any) -> Any:
        b, s = ids.shape
        if (b, s) == (rows_static, seq_static):
            args = {names[0]: ids.astype(np.int32), names[1]: mask.astype(np.int32)}
            return runner(**args)[out_name]
        if b != rows_static or s > seq_static:
            raise ValueError(f"this LiteRT model takes batch {rows_static} and at most "
                             f"{seq_static} tokens; got {b}x{s}")
        pad = np.zeros((b, seq_static), np.int32)
        pid, pmask = pad.copy(), pad.copy()
        pid[:, :s], pmask[:, :s] = ids, mask
        return runner(**{names[0]: pid, names[1]: pmask})[out_name][:, :s]

    def fn(feed: dict[str, Any]) -> Any:
        ids, mask = feed["input_ids"], feed["attention_mask"]
        if ids.shape[0] == rows_static:
            return one(ids, mask)
        return np.concatenate([one(ids[i:i + rows_static], mask[i:i + rows_static])
                               for i in range(0, ids.shape[0], rows_static)])

    settings = {"runtime": "litert", "version": getattr(ai_edge_litert, "__version__", "?"),
                "threads": threads, "delegate": "XNNPACK (the interpreter's default CPU delegate)",
                "static_shape": [rows_static, seq_static]}
    return "litert", list(feeds), fn, settings
