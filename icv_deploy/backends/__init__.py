"""Backends: torch (eager), onnx (ONNX Runtime), trt (TensorRT), openvino (CPU: bf16, int8). Each is imported only
when asked for."""

from __future__ import annotations

from .base import Backend, ModelInfo

ENGINES = ("torch", "onnx", "trt", "openvino")


def load_backend(path, engine: str = "torch", device: str = "cpu", dtype=None, vae: str | None = None, **options) -> Backend:
    """Open the backend `engine` over a model folder (torch), an ONNX folder (onnx), an engine folder (trt) or an
    ONNX or OpenVINO IR folder (openvino).

    `vae`: "full" (the model's VAE), "tiny" (the optional TAESD in vae_tiny/, or an ONNX folder exported with
    `--vae tiny`) or None: full for a model folder, whatever an ONNX or engine folder was exported with.
    """
    from ..errors import IcvError

    if engine == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend.from_folder(path, device=device, dtype=dtype, vae=vae, **options)
    if engine == "onnx":
        from .onnx_backend import OnnxBackend

        return OnnxBackend.from_folder(path, device=device, dtype=dtype, vae=vae, **options)
    if engine == "trt":
        from .trt_backend import TrtBackend

        return TrtBackend.from_folder(path, device=device, dtype=dtype, vae=vae, **options)
    if engine == "openvino":
        from .openvino_backend import OpenVinoBackend

        return OpenVinoBackend.from_folder(path, device=device, dtype=dtype, vae=vae, **options)
    raise IcvError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")


__all__ = ["Backend", "ModelInfo", "ENGINES", "load_backend"]
