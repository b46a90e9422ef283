"""Paired augmentation: the input image and its target v(y) get exactly the same resize, crop and flip.

The recipe of InstructPix2Pix and InstructCV (paper, appendix A.1): resize both pictures to a random square size
in [resize_min, resize_max], crop a random `resolution` square at the same place, flip both or neither.
The randomness comes from a seed, not from a global generator, so that an example looks the same in a resumed
run as in an uninterrupted one: `example_rng(seed, epoch, index)`.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """A generator owned by one example of one epoch (independent of the process and of what ran before)."""
    return np.random.default_rng([seed, epoch, index])


def to_tensor(image: Image.Image) -> torch.Tensor:
    """HxWx3 uint8 picture -> 3xHxW float in [-1, 1], the range the VAE expects."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def paired_augment(
    image: Image.Image,
    target: Image.Image,
    rng: np.random.Generator,
    resolution: int = 256,
    resize_min: int = 256,
    resize_max: int = 288,
    flip: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (input, target) as 3 x resolution x resolution tensors in [-1, 1], augmented identically."""
    size = int(rng.integers(resize_min, resize_max + 1))
    top = int(rng.integers(0, size - resolution + 1))
    left = int(rng.integers(0, size - resolution + 1))
    do_flip = bool(flip and rng.random() < 0.5)
    out = []
    for picture in (image, target):
        picture = picture.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
        picture = picture.crop((left, top, left + resolution, top + resolution))
        if do_flip:
            picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(to_tensor(picture))
    return out[0], out[1]


def center_pair(image: Image.Image, target: Image.Image, resolution: int) -> tuple[Image.Image, Image.Image]:
    """The un-augmented view used for validation: both pictures resized to resolution x resolution."""
    size = (resolution, resolution)
    return (image.convert("RGB").resize(size, Image.Resampling.LANCZOS),
            target.convert("RGB").resize(size, Image.Resampling.LANCZOS))
