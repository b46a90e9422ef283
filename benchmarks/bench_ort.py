"""The ONNX backend with tuned session options (icv_deploy/backends/ort_tuning.py), for `--engine onnx-tuned`.

The runtime's OnnxBackend builds its sessions with a few plain options; this opens the same folder through the
same checks and the same OnnxBackend class, only the sessions differ: ort_tuning's options and, with
`static=True`, every symbolic dimension pinned to the shapes of one call (K instructions on one image of
height x width pixels). A static session refuses other shapes, so a service that serves one resolution builds
them once; the text encoder stays dynamic (it runs on batches of K and of 1, the empty prompt).
"""

from __future__ import annotations

from pathlib import Path

import torch

from icv_deploy.backends import ort_tuning


def call_shapes(info, batch_instructions: int, height: int, width: int, guidance: bool = True) -> dict[str, dict | None]:
    """Input shapes of each submodel for K instructions on one image of height x width pixels (the UNet sees 3K rows,
    or K for a one-pass model: guidance=False)."""
    f, k, c = info.vae_scale_factor, batch_instructions, info.latent_channels
    h, w = height // f, width // f
    rows = 3 * k if guidance else k
    return {
        "text_encoder": None,  # called with K and with 1 (the empty prompt): keep it dynamic
        "unet": ort_tuning.unet_input_shapes(rows, h, w, info.unet_in_channels, info.max_text_tokens, info.text_hidden_size),
        "vae_encoder": {"sample": (1, 3, height, width)},
        "vae_decoder": {"latent_sample": (k, c, h, w)},
    }


def pinned_entry(entry: dict, dims: dict | None) -> dict:
    """The manifest entry with its symbolic dims replaced by the pinned sizes: what a static session reports."""
    if not dims:
        return entry
    inputs = [{**spec, "shape": [dims.get(d, d) if isinstance(d, str) else d for d in spec["shape"]]} for spec in entry["inputs"]]
    return {**entry, "inputs": inputs}


def tuned_onnx_backend(folder: Path, device: str = "cpu", batch_instructions: int = 1, height: int = 256,
                       width: int = 256, static: bool = True, threads: int | None = None, vae: str | None = None,
                       guidance: bool = True):
    import onnxruntime as ort

    from icv_deploy.backends.onnx_backend import (SUBMODEL_NAMES, OnnxBackend, check_onnx_folder, check_session,
                                                  check_vae_choice, folder_vae, info_from_manifest, providers_for)

    folder = Path(folder)
    manifest = check_onnx_folder(folder)
    check_vae_choice(folder_vae(manifest), vae, folder)
    info = info_from_manifest(manifest, folder)
    device = torch.device(device)
    shapes = call_shapes(info, batch_instructions, height, width, guidance)
    sessions, pinned = {}, {}
    for name in SUBMODEL_NAMES:
        entry = manifest["submodels"][name]
        path = folder / entry["path"]
        dims = ort_tuning.static_dims(path, shapes[name]) if static and shapes[name] else None
        options = ort_tuning.session_options(name, device.type, threads=threads, static_dims=dims)
        sessions[name] = ort.InferenceSession(str(path), options, providers=providers_for(device))
        check_session(name, sessions[name], pinned_entry(entry, dims), folder)
        pinned[name] = dims
    backend = OnnxBackend(sessions, info, device, manifest, io_binding=device.type == "cuda")
    backend.name = "onnx-tuned"
    backend.static_dims = pinned
    return backend
