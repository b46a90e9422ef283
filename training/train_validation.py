"""Validation pictures during training: for fixed examples of each task, a row of input | target | prediction.

Columns are labelled and each row carries its instruction; pictures are enlarged to at least 256 pixels (nearest
neighbour) so that the text and the model's pixels can be read.

Predictions come from diffusers' `StableDiffusionInstructPix2PixPipeline` built from the modules being trained
(EMA weights when EMA is on), with a short Euler-ancestral run at the config's runtime guidance and a fixed seed,
so that grids of successive steps are comparable; a model trained for one pass (objective one_pass) makes its one
pass instead. The grid is saved as `validation/step-<step>.png` and sent to tensorboard.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from icv_deploy.atomic import atomic_path
from icv_deploy.tasks.visualize import TILE_HEIGHT, labelled_grid

from .augment import center_pair

COLUMNS = ("input", "target", "prediction")


def build_pipeline(unet, vae, text_encoder, tokenizer, scheduler_folder: Path):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    scheduler = EulerAncestralDiscreteScheduler.from_pretrained(scheduler_folder, subfolder="scheduler")
    return StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def sampled_predictor(pipe, steps: int, seed: int, device, guidance_scale: float = 7.5, image_guidance_scale: float = 1.5):
    """predict(instruction, image) -> picture: diffusers' pipeline, a short Euler-ancestral run, fixed seed, at the
    guidance the model will run with (the config's `runtime`; the paper's 7.5 / 1.5 by default): a model trained
    for guidance 1 / 1, such as the demo, paints worse depth at 7.5 / 1.5, and its strips should show what it does."""
    pipe.set_progress_bar_config(disable=True)

    def predict(instruction: str, image: Image.Image) -> Image.Image:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        # Mixed precision: the frozen VAE (and text encoder) hold fp16/bf16 weights, the UNet fp32.
        mixed = pipe.vae.dtype != torch.float32
        with torch.autocast(device.type, dtype=pipe.vae.dtype if mixed else None, enabled=mixed):
            return pipe(instruction, image=image, num_inference_steps=steps, guidance_scale=guidance_scale,
                        image_guidance_scale=image_guidance_scale, generator=generator, output_type="pil").images[0]

    return predict


def one_pass_predictor(mode, unet, vae, text_encoder, tokenizer, scheduler_config: dict):
    """predict(instruction, image) -> picture of a model trained for one pass (icv_deploy/one_pass.py)."""
    from icv_deploy.one_pass import one_pass_latents

    from .augment import to_tensor
    from .train_data import tokenize

    def predict_noise(sample, t, text):
        return unet(sample, t, encoder_hidden_states=text, return_dict=False)[0]

    def predict(instruction: str, image: Image.Image) -> Image.Image:
        device, dtype = vae.device, vae.dtype
        text = text_encoder(tokenize(tokenizer, [instruction]).to(device))[0]
        image_latents = vae.encode(to_tensor(image)[None].to(device, dtype)).latent_dist.mode().float()
        latents = one_pass_latents(mode, predict_noise, text, image_latents, vae.config.scaling_factor,
                                   scheduler_config)
        pixels = vae.decode((latents / vae.config.scaling_factor).to(dtype)).sample.float()[0]
        array = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(array)

    return predict


@torch.no_grad()
def predict_grid(predict, rows, indices: list[int], resolution: int) -> Image.Image:
    """One row per example: input, target and prediction side by side under their labels, the instruction below."""
    pictures, captions = [], []
    for index in indices:
        row = rows[index]
        image, target = center_pair(row["input_image"], row["edited_image"], resolution)
        prediction = predict(row["edit_prompt"], image).convert("RGB").resize((resolution, resolution))
        pictures.append([np.asarray(p.convert("RGB")) for p in (image, target, prediction)])
        captions.append(row["edit_prompt"])
    grid = labelled_grid(pictures, column_labels=list(COLUMNS), row_captions=captions, tile_height=max(TILE_HEIGHT, resolution))
    return Image.fromarray(grid)


def save_grid(grid: Image.Image, folder: Path, step: int, trackers=()) -> Path:
    path = folder / f"step-{step:07d}.png"
    with atomic_path(path, suffix=".png") as tmp:
        grid.save(tmp, format="PNG")
    for tracker in trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation", np.asarray(grid), step, dataformats="HWC")
    return path
