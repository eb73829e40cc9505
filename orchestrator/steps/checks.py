"""The base of the checks that run an engine (parity, benchmark) and its shared planning rules."""

from __future__ import annotations

from typing import Any

from orchestrator import formats
from orchestrator.runtime.engines import toolchain_for_format
from orchestrator.step import P, PlanContext, Planned, Resources, Step


class EngineCheck(Step[P]):
    """Base of the checks that run an engine (parity, benchmark): measured on the target's
    hardware (keyed by device and accelerator; a cuda target's check needs a CUDA device), keyed
    by the runtime of the engine under test only."""

    kind = "check"
    input_formats = {"model": formats.ENGINES}
    toolchain = ("torch", "transformers", "onnxruntime", "openvino")
    # the PyTorch reference and ONNX engines (warm workers import them ahead)
    preload = ("onnx", "torch", "transformers", "transformers.modeling_utils")
    hardware_keys = ("device", "accelerator")

    @classmethod
    def plan(cls, params: P, at: PlanContext) -> Planned[P]:
        return cls.planned(params, toolchain=engine_toolchain(at.input_formats, at.reference),
                           resources=on_device(cls.resources, at.hardware.model_dump()))


def on_device(resources: Resources, hardware: dict[str, Any]) -> Resources:
    """A check on a cuda target runs where the engine will: it needs a CUDA device."""
    if hardware.get("device") == "cuda":
        return resources.model_copy(update={"cuda": max(1, resources.cuda)})
    return resources


def device_of(hardware: dict[str, Any]) -> str:
    """Where a check runs its engine and reference: the target's device (cpu or cuda)."""
    return str(hardware.get("device") or "cpu")


def engine_toolchain(inputs: dict[str, str], reference: bool) -> tuple[str, ...]:
    """A check's toolchain: only the runtime of the engine under test enters its key (an OpenVINO
    upgrade does not re-measure ONNX Runtime targets); a reference task runs PyTorch."""
    return ("torch", "transformers") if reference else toolchain_for_format(inputs.get("model", ""))
