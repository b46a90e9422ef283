"""Verification: each exported graph, run in ONNX Runtime, against the PyTorch module it came from.

Inputs are fresh random tensors at a shape the export never saw (another batch, non-square), so a shape that the
tracer baked in as a constant fails here. The error is relative to the reference's magnitude:
    max |onnx - torch| / max |torch|
and an export fails when it exceeds the bound for its precision. The fp16 bound is loose on purpose: random-weight
models have no trained structure that keeps fp16 rounding small; it catches broken graphs, not rounding.
To keep peak memory low the PyTorch reference is computed first (the caller then frees the module) and the ONNX
Runtime session is created afterwards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from icv_deploy.errors import IcvError

BOUNDS = {"fp32": 1e-4, "fp16": 5e-2}


class VerificationError(IcvError):
    """An exported graph disagrees with its PyTorch module by more than the bound."""


def relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    if actual.shape != reference.shape:
        return float("inf")
    scale = float(np.abs(reference).max()) or 1.0
    return float(np.abs(actual - reference).max()) / scale


@torch.inference_mode()
def torch_reference(module: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    device = next(module.parameters()).device
    out = module(*[v.to(device) for v in inputs.values()])
    return out.float().cpu().numpy()


def onnx_output(graph: Path, inputs: dict[str, torch.Tensor], providers: list[str] | None = None) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(graph), options, providers=providers or ["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]


def check(name: str, error: float, precision: str) -> None:
    bound = BOUNDS[precision]
    if not error <= bound:  # also catches NaN
        raise VerificationError(
            f"{name}: ONNX Runtime output differs from PyTorch by {error:.3g} (relative), bound {bound:g} for {precision}"
        )
