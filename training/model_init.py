"""Where training starts: the modules of a text-to-image or InstructCV model, ready for instruction tuning.

The starts:
- a text-to-image Stable Diffusion folder or hub id (4-channel UNet): `conv_in` is widened to 8 input channels,
  the original weights (and bias) go to channels 0-3 and channels 4-7 (the image latent) start at zero, so the
  widened UNet first predicts exactly what the base model predicts;
- an existing 8-channel InstructCV / InstructPix2Pix checkpoint: training continues from it;
- `random:tiny`: a tiny model with random weights from `icv_deploy.testing` (tests);
- `random`: a model trained from scratch (the bundled demo model): UNet and text encoder built from the
  config's `architecture` with random weights, the VAE a trained one (`base_vae`, from `icv-train-vae`).
Beside a trained base model, `base_vae` swaps its autoencoder for another (one fine-tuned later, whose latent space
the UNet is then adapted to: benchmarks/results/demo-boxes-2026-12-01/).
Weights are read from safetensors only (DESIGN.md 10).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from icv_deploy.errors import IcvError, ModelFilesError
from icv_deploy.model_files import resolve_model

RANDOM_MODELS = ("random:tiny", "random")


@dataclass
class TrainingModels:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    noise_scheduler: object  # DDPMScheduler built from the base model's scheduler config
    folder: Path  # where the base model was read from
    vae_folder: Path  # where the autoencoder was read from: `base_vae` beside a trained base, else folder/vae
    widened: bool  # True when conv_in was widened from 4 to 8 channels


def widen_conv_in(unet) -> None:
    """Turn a 4-channel text-to-image UNet into an 8-channel InstructPix2Pix UNet, in place.

    Channels 0-3 keep the original weights and the bias is kept, channels 4-7 are zero: with a zero image
    latent, or before any training, the prediction is exactly the base model's.
    """
    old = unet.conv_in
    # The image latent has as many channels as the noisy latent: 4 + 4 for Stable Diffusion.
    new = torch.nn.Conv2d(2 * old.in_channels, old.out_channels, old.kernel_size,
                          old.stride, old.padding, dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=2 * old.in_channels)


def make_random_base(kind: str, folder: Path, seed: int = 0, architecture: dict | None = None,
                     vae_folder: str | None = None) -> Path:
    """Save the start of a `random:tiny` or `random` run into `folder` (kept, so that a resumed run finds it)."""
    from icv_deploy.testing import make_tiny_model

    if kind not in RANDOM_MODELS:
        raise IcvError(f"unknown random model {kind!r}: choose one of {', '.join(RANDOM_MODELS)}")
    if kind == "random" and not (architecture and vae_folder):
        raise IcvError("base_model random needs `architecture` (unet, text_encoder) and `base_vae` (a trained VAE folder)")
    if not (folder / "model_index.json").exists():
        from icv_deploy.atomic import atomic_dir

        with atomic_dir(folder) as tmp:
            if kind == "random:tiny":
                make_tiny_model(tmp, seed=seed)
            else:
                make_scratch_model(tmp, architecture, Path(vae_folder), seed)
    return folder


def trained_vae(folder: Path) -> Path:
    """`folder` if it holds an autoencoder (a `base_vae`, from `icv-train-vae`), else a one-line error."""
    if not (folder / "config.json").exists():
        raise ModelFilesError(f"base_vae {folder}: no trained VAE there (run icv-train-vae first)")
    return folder


def make_scratch_model(folder: Path, architecture: dict, vae_folder: Path, seed: int) -> Path:
    """A random UNet and text encoder (from `architecture`) around a trained VAE, saved as a diffusers folder.

    `architecture` may hold a `scheduler` section (e.g. prediction_type: v_prediction) over the SD 1.5 scheduler."""
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler

    from icv_deploy.testing import build_pipeline

    vae = AutoencoderKL.from_pretrained(trained_vae(vae_folder), use_safetensors=True)
    vae_config = {k: v for k, v in vae.config.items() if not k.startswith("_")}
    pipe = build_pipeline(architecture["unet"], vae_config, architecture["text_encoder"], seed=seed)
    pipe.register_modules(vae=vae)  # the trained VAE in place of the random one built beside it
    if architecture.get("scheduler"):
        pipe.register_modules(scheduler=EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                                    **architecture["scheduler"]))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def load_training_models(base_model: str, random_dir: Path | None = None, seed: int = 0,
                         architecture: dict | None = None, base_vae: str | None = None) -> TrainingModels:
    """Read unet / vae / text_encoder / tokenizer / scheduler of `base_model` and give the UNet 8 input channels."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if base_model.startswith("random"):
        if random_dir is None:
            raise IcvError(f"{base_model}: a folder for the random base model is needed")
        folder = make_random_base(base_model, Path(random_dir), seed, architecture, base_vae)
    else:
        folder = resolve_model(base_model)
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if not (folder / part).is_dir():
            raise ModelFilesError(f"{folder}: missing the {part}/ folder (expected a diffusers-format Stable Diffusion model)")
    # A random base already holds base_vae in folder/vae (make_scratch_model put it there).
    swapped = base_vae and not base_model.startswith("random")
    vae_folder = trained_vae(Path(base_vae)) if swapped else folder / "vae"
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", use_safetensors=True)
        vae = AutoencoderKL.from_pretrained(vae_folder, use_safetensors=True)
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", use_safetensors=True)
    except (OSError, EnvironmentError) as exc:
        raise ModelFilesError(f"{folder}: could not read the weights ({' '.join(str(exc).split())[:300]}); "
                              "safetensors weights are required") from None
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")

    latent_channels = vae.config.latent_channels
    in_channels = unet.config.in_channels
    widened = False
    if in_channels == latent_channels:
        widen_conv_in(unet)
        widened = True
    elif in_channels != 2 * latent_channels:
        raise ModelFilesError(f"{folder}: the UNet has {in_channels} input channels; expected {latent_channels} "
                              f"(text-to-image) or {2 * latent_channels} (InstructCV)")
    return TrainingModels(unet, vae, text_encoder, tokenizer, noise_scheduler, folder, vae_folder, widened)
