"""Segmentation examples about a category the picture does not hold, made while training from cached latents.

benchmarks/answer_anatomy.py found the demo models deaf to the category word: asked to segment a category that is
not in the picture, they paint the same mask as for the named one, a mask of every object. The data never says
otherwise: every segmentation example names a category that is present (icv-data build paints no target for an
absent one), and in a quarter of the scenes "every object" is exactly right. With `segmentation_negatives: p` in an
icv-train config, each segmentation example is, with probability p (drawn per epoch and example), asked instead
about a category absent from its picture, and its target is an empty mask, as DESIGN.md 6 encodes "nothing there":

    "Mark all pixels that belong to the cube." -> "Mark all pixels that belong to the cone."   target: all black

The instruction keeps its wording: the category word is one CLIP token (training/synthetic.py's names), swapped in
the tokens. The picture's categories are read from the dataset's segmentation rows (one per category present, as the
synth adapter makes them); the empty mask is encoded once by the frozen VAE, like every other cached target.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from .prompts import category_word_tokens
from .synthetic import CATEGORIES


def empty_mask_posterior(vae, resolution: int, flip: bool, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std), each (flips, C, h, w): the frozen VAE's posterior of an empty mask (all black), as the latent cache
    (load_or_build_cache, same arguments) holds every target's."""
    from PIL import Image

    from .latent_cache import _encode

    _, mean, std = _encode(vae, [Image.new("RGB", (resolution, resolution))], resolution, 2 if flip else 1, autocast)
    return mean[0], std[0]


class AbsentCategoryNegatives:
    """Swaps segmentation examples to an absent category with an empty-mask target (see the module's docstring)."""

    def __init__(self, share: float, rows, tokenizer, empty_mean: torch.Tensor, empty_std: torch.Tensor,
                 categories=CATEGORIES):
        self.share = share
        self.empty_mean, self.empty_std = empty_mean, empty_std  # (flips, C, h, w): the empty mask's posterior
        self.token = category_word_tokens(tokenizer, categories, "segmentation_negatives")
        columns = rows.select_columns(["task", "category", "image_id"])
        tasks, names, images = columns["task"], columns["category"], columns["image_id"]
        present = defaultdict(set)
        for task, name, image in zip(tasks, names, images):
            if task == "segmentation" and name is not None:
                present[image].add(name)
        # per row: (its category, the categories its picture lacks), for the segmentation rows that can be swapped
        self.swappable = {index: (name, [c for c in categories if c not in present[image]])
                          for index, (task, name, image) in enumerate(zip(tasks, names, images))
                          if task == "segmentation" and name in self.token and len(present[image]) < len(categories)}

    def apply(self, example: dict, index: int, rng: np.random.Generator, mirrored: int) -> dict:
        """The example itself, or (with probability `share` for a swappable row) its absent-category version."""
        if index not in self.swappable or rng.random() >= self.share:
            return example
        named, absent = self.swappable[index]
        other = absent[int(rng.integers(len(absent)))]
        input_ids = example["input_ids"].clone()
        position = input_ids == self.token[named]
        if not position.any():  # the instruction does not hold the word as its own token: keep the example
            return example
        input_ids[position] = self.token[other]
        swapped = {**example, "input_ids": input_ids, "target_mean": self.empty_mean[mirrored],
                   "target_std": self.empty_std[mirrored]}
        if "target_pixels" in example:
            swapped["target_pixels"] = -torch.ones_like(example["target_pixels"])  # black: the empty mask
        return swapped
