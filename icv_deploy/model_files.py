"""Finding and checking model folders (docs/DESIGN.md 3, 10).

A model is a bundled model's name (`demo`, `demo-1step`: folders shipped in icv_deploy/assets/), a
diffusers-format folder or a Hugging Face hub id. No model at all means $ICV_MODEL, else `demo`. Hub ids are
fetched with `snapshot_download` (safetensors and configs only: nothing is unpickled) where the network
allows, and answered with one clear line where it does not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import IcvError, ModelFilesError
from .weights import check_model_weights

DIFFUSERS_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# Only the diffusers component folders: hub repos also hold multi-GB single-file checkpoints and fp16 copies.
HUB_PATTERNS = ["model_index.json", "icv_config.json", "unet/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*",
                "vae_tiny/*"]
HUB_IGNORE = ["*.fp16.*", "*non_ema*", "*.bin", "*.ckpt", "*.msgpack", "*.onnx*", "*.h5"]


# ---- bundled models and the default --------------------------------------------------------------------------------
# Bundled models are addressed by their bare name; `./demo` (or any other path) means a folder of that name instead.
BUNDLED_DIR = Path(__file__).parent / "assets"
BUNDLED_MODELS = ("demo", "demo-1step")
DEFAULT_MODEL = "demo"
MODEL_ENV = "ICV_MODEL"
CONFIG_NAME = "icv_config.json"  # the model's own runtime defaults (sampler, steps, resolution, random_weights)


def default_model() -> str:
    """What "no model given" means: $ICV_MODEL if set, else the bundled demo model."""
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def bundled_model(name: str) -> Path:
    """The shipped folder of a bundled model, refused in one line when this installation lacks it."""
    folder = BUNDLED_DIR / name
    if not (folder / "model_index.json").exists():
        raise ModelFilesError(f"model {name}: the bundled model is not installed (no {folder / 'model_index.json'}); "
                              f"give a model folder or hub id instead, or set ${MODEL_ENV}")
    return folder


def resolve_model(model: str | Path | None = None) -> Path:
    """A bundled model by name, a local folder as it is, or a hub id downloaded (or found in the local cache).
    None means `default_model()`."""
    if model is None or str(model) == "":
        model = default_model()
    if isinstance(model, str) and model in BUNDLED_MODELS:
        return bundled_model(model)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelFilesError(f"model {model}: not a folder (expected a diffusers-format model folder)")
        check_model_weights(path)
        return path
    text = str(model)
    if not looks_like_hub_id(text):
        raise ModelFilesError(f"model {model}: no such folder{_did_you_mean(path)}")
    offline = hub_offline()
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(text, allow_patterns=HUB_PATTERNS, ignore_patterns=HUB_IGNORE,
                                        local_files_only=offline))
    except Exception as exc:  # offline, unknown id, gated repo: one line either way
        if offline:
            raise ModelFilesError(f"model {model}: no such folder, and not in the hub cache ({OFFLINE_ENV} is set, so the "
                                  "hub is not asked)") from None
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFilesError(f"model {model}: not a local folder and could not be fetched from the hub ({reason})") from None
    check_model_weights(folder)
    return folder


OFFLINE_ENV = "HF_HUB_OFFLINE"


def hub_offline() -> bool:
    """True when the hub must not be asked: $HF_HUB_OFFLINE as huggingface_hub reads it (1, true, yes, on)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def looks_like_hub_id(text: str) -> bool:
    """`owner/name` that could be a hub repo and is no local path: a typo in `models/tiny-random`, whose `models/`
    exists here, is a missing folder, answered at once instead of after a network round trip."""
    import re

    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        return False
    owner, name = text.split("/")
    if Path(owner).is_dir():
        return False
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]{0,95}", owner) and re.fullmatch(r"[\w.-]{1,96}", name))


def _did_you_mean(path: Path) -> str:
    """ ' (did you mean X?)' for a sibling folder whose name is close to the one given, else ''."""
    import difflib

    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return ""
    names = [p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.75)
    return f" (did you mean {parent / close[0]}?)" if close else ""


MAX_JSON_BYTES = 64 << 20  # configs and manifests are kilobytes; a bigger "config" is not one


def read_json(path: Path) -> dict:
    try:
        size = path.stat().st_size
        if size == 0:
            raise ModelFilesError(f"{path}: empty file (expected JSON)")
        if size > MAX_JSON_BYTES:
            raise ModelFilesError(f"{path}: {size:,} bytes, too large for a JSON config (at most {MAX_JSON_BYTES:,})")
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFilesError(f"missing {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFilesError(f"{path}: not valid JSON ({exc.__class__.__name__})") from None


def model_config(folder: Path) -> dict:
    """The model's icv_config.json ({} when it has none): runtime defaults and `random_weights`."""
    path = Path(folder) / CONFIG_NAME
    return read_json(path) if path.exists() else {}


def check_safetensors(part_folder: Path) -> None:
    """Weights load from safetensors only: pickles are never unpickled (docs/DESIGN.md 10)."""
    if not list(part_folder.glob("*.safetensors")):
        pickles = list(part_folder.glob("*.bin")) + list(part_folder.glob("*.ckpt"))
        hint = " (only pickle weights found: convert them to safetensors; pickles are never loaded)" if pickles else ""
        raise ModelFilesError(f"{part_folder}: no .safetensors weights{hint}")


def check_diffusers_folder(folder: Path) -> None:
    """Refuse a folder that lacks a part or keeps weights only as pickles."""
    if not (folder / "model_index.json").exists():
        raise ModelFilesError(f"{folder}: no model_index.json (not a diffusers-format model folder)")
    for part in DIFFUSERS_PARTS:
        if not (folder / part).is_dir():
            raise ModelFilesError(f"{folder}: missing the {part}/ folder")
    for part in ("unet", "vae", "text_encoder"):
        check_safetensors(folder / part)
    unet_cfg = read_json(folder / "unet" / "config.json")
    if unet_cfg.get("in_channels") != 8:
        raise ModelFilesError(
            f"{folder}: the UNet has {unet_cfg.get('in_channels')} input channels, an InstructCV model needs 8 "
            "(noisy latent + image latent)"
        )


# ---- the optional tiny autoencoder (TAESD) ------------------------------------------------------------------------
# diffusers' AutoencoderTiny, e.g. madebyollin/taesd, distilled to share SD 1.x's latent space. InstructCV fine-tunes
# only the UNet, so SD 1.5's TAESD fits it. It is optional: `vae="tiny"` asks for it.
TINY_VAE_FOLDER = "vae_tiny"
VAE_KINDS = ("full", "tiny")  # the `vae` option of every backend: vae/ (AutoencoderKL) or vae_tiny/ (AutoencoderTiny)
TINY_VAE_HINT = "copy a diffusers AutoencoderTiny such as madebyollin/taesd there"


def parse_vae(vae: str | None) -> str | None:
    """Check a `vae` option: "full", "tiny", or None (left to the caller: the model's own VAE)."""
    if vae is not None and vae not in VAE_KINDS:
        raise IcvError(f"unknown vae {vae!r}: choose full (the model's VAE) or tiny (vae_tiny/, TAESD), or leave it unset")
    return vae


# AutoencoderTiny's defaults (= madebyollin/taesd), for configs that leave the block lists out.
_TINY_DEFAULT_BLOCKS = [64, 64, 64, 64]


def vae_scale_factor(vae_config: dict) -> int:
    """The main (AutoencoderKL) VAE's downsampling: 2 ** (len(block_out_channels) - 1), never assumed to be 8."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def tiny_vae_scale_factors(tiny_config: dict) -> tuple[int, int]:
    """(encoder downsampling, decoder upsampling) of an AutoencoderTiny config.

    Its encoder halves the size in every block but the first; its decoder upsamples by `upsampling_scaling_factor`
    between blocks. (diffusers registers block_out_channels = decoder_block_out_channels, as the pipelines read it.)
    """
    encoder_blocks = tiny_config.get("encoder_block_out_channels", _TINY_DEFAULT_BLOCKS)
    decoder_blocks = tiny_config.get("decoder_block_out_channels", tiny_config.get("block_out_channels", _TINY_DEFAULT_BLOCKS))
    upsampling = tiny_config.get("upsampling_scaling_factor", 2)
    return 2 ** (len(encoder_blocks) - 1), upsampling ** (len(decoder_blocks) - 1)


def check_tiny_vae_folder(folder: Path) -> dict:
    """Refuse a missing vae_tiny/ or one that does not fit the main VAE's latent space; return its config."""
    folder = Path(folder)
    tiny_dir = folder / TINY_VAE_FOLDER
    if not tiny_dir.is_dir():
        raise ModelFilesError(f"{folder}: no {TINY_VAE_FOLDER}/ folder for the tiny VAE ({TINY_VAE_HINT})")
    tiny = read_json(tiny_dir / "config.json")
    if tiny.get("_class_name", "AutoencoderTiny") != "AutoencoderTiny":
        raise ModelFilesError(f"{tiny_dir}: holds a {tiny.get('_class_name')}, the tiny VAE must be a diffusers "
                              f"AutoencoderTiny ({TINY_VAE_HINT})")
    check_safetensors(tiny_dir)
    main = read_json(folder / "vae" / "config.json")
    want_factor, want_channels = vae_scale_factor(main), main.get("latent_channels", 4)
    encoder_factor, decoder_factor = tiny_vae_scale_factors(tiny)
    if (encoder_factor, decoder_factor) != (want_factor, want_factor):
        raise ModelFilesError(f"{tiny_dir}: the tiny VAE scales images by {encoder_factor} (encoder) and "
                              f"{decoder_factor} (decoder), the model's VAE by {want_factor}: not the same latent space")
    if tiny.get("latent_channels", 4) != want_channels:
        raise ModelFilesError(f"{tiny_dir}: the tiny VAE has {tiny.get('latent_channels', 4)} latent channels, the "
                              f"model's VAE {want_channels}: not the same latent space")
    return tiny
