"""Finding and checking model folders (DESIGN.md 3, 10).

A model is a diffusers-format folder or a Hugging Face hub id. Hub ids are fetched with `snapshot_download`
(safetensors and configs only: nothing is unpickled) where the network allows, and answered with one clear
line where it does not.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ModelFilesError

DIFFUSERS_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# Only the diffusers component folders: hub repos also hold multi-GB single-file checkpoints and fp16 copies.
HUB_PATTERNS = ["model_index.json", "icv_config.json", "unet/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*"]
HUB_IGNORE = ["*.fp16.*", "*non_ema*", "*.bin", "*.ckpt", "*.msgpack", "*.onnx*", "*.h5"]


def resolve_model(model: str | Path) -> Path:
    """A local folder as it is, or a hub id downloaded (or found in the local cache)."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelFilesError(f"model {model}: not a folder (expected a diffusers-format model folder)")
        return path
    text = str(model)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise ModelFilesError(f"model {model}: no such folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, allow_patterns=HUB_PATTERNS, ignore_patterns=HUB_IGNORE))
    except Exception as exc:  # offline, unknown id, gated repo: one line either way
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFilesError(f"model {model}: not a local folder and could not be fetched from the hub ({reason})") from None


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFilesError(f"missing {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFilesError(f"{path}: not valid JSON ({exc.__class__.__name__})") from None


def check_diffusers_folder(folder: Path) -> None:
    """Refuse a folder that lacks a part or keeps weights only as pickles."""
    if not (folder / "model_index.json").exists():
        raise ModelFilesError(f"{folder}: no model_index.json (not a diffusers-format model folder)")
    for part in DIFFUSERS_PARTS:
        if not (folder / part).is_dir():
            raise ModelFilesError(f"{folder}: missing the {part}/ folder")
    for part in ("unet", "vae", "text_encoder"):
        if not list((folder / part).glob("*.safetensors")):
            pickles = list((folder / part).glob("*.bin")) + list((folder / part).glob("*.ckpt"))
            hint = " (only pickle weights found: convert them to safetensors; pickles are never loaded)" if pickles else ""
            raise ModelFilesError(f"{folder / part}: no .safetensors weights{hint}")
    unet_cfg = read_json(folder / "unet" / "config.json")
    if unet_cfg.get("in_channels") != 8:
        raise ModelFilesError(
            f"{folder}: the UNet has {unet_cfg.get('in_channels')} input channels, an InstructCV model needs 8 "
            "(noisy latent + image latent)"
        )
