"""Validation pictures during training: for fixed examples of each task, a row of input | target | prediction.

Columns are labelled and each row carries its instruction; pictures are enlarged to at least 256 pixels (nearest
neighbour) so that the text and the model's pixels can be read.

Predictions come from diffusers' `StableDiffusionInstructPix2PixPipeline` built from the modules being trained
(EMA weights when EMA is on), with a short Euler-ancestral run and a fixed seed, so that grids of successive
steps are comparable. The grid is saved as `validation/step-<step>.png` and sent to tensorboard.
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


@torch.no_grad()
def predict_grid(pipe, rows, indices: list[int], resolution: int, steps: int, seed: int, device) -> Image.Image:
    """One row per example: input, target and prediction side by side under their labels, the instruction below."""
    pipe.set_progress_bar_config(disable=True)
    pictures, captions = [], []
    for index in indices:
        row = rows[index]
        image, target = center_pair(row["input_image"], row["edited_image"], resolution)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        # Mixed precision: the frozen VAE (and text encoder) hold fp16/bf16 weights, the UNet fp32.
        mixed = pipe.vae.dtype != torch.float32
        with torch.autocast(device.type, dtype=pipe.vae.dtype if mixed else None, enabled=mixed):
            prediction = pipe(row["edit_prompt"], image=image, num_inference_steps=steps, guidance_scale=7.5,
                              image_guidance_scale=1.5, generator=generator, output_type="pil").images[0]
        prediction = prediction.convert("RGB").resize((resolution, resolution))
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
