"""Which task did the model answer? Read it from the painted image v(y) when the instruction left it open.

Each task paints a different kind of picture (encodings.py):
- detection: the input image itself, plus pure blue outlines (none when nothing was found);
- classification: one solid colour;
- segmentation: black and white (R = G = B, almost every pixel near 0 or 255);
- depth: a grey ramp (R = G = B, many values between black and white).

`task_scores` measures how well the painting fits each kind (a number in [0, 1] per task) and `read_task`
picks the best. The model's paintings are not exact, so every measure tolerates noise and soft edges. A
solid black or white painting is an empty or full mask (segmentation), a solid mid grey a flat depth map:
solid colours count as classification only when they are coloured.
"""

from __future__ import annotations

import numpy as np

from .decoders import blue_mask
from .encodings import TASKS

# A pixel "matches" another when no channel differs by more than this (noise, compression, soft edges).
MATCH_TOLERANCE = 40
# Mean (max - min over channels) below which a painting counts as fully grey; zero greyness at 3x this.
GREY_SPREAD = 20
# Grey levels this close to 0 or 255 count as mask values.
MASK_MARGIN = 48
# The painting repeats the input (detection) when this fraction of its non-blue pixels matches it.
SAME_AS_INPUT = 0.8


def task_scores(visual: np.ndarray, image: np.ndarray | None = None) -> dict[str, float]:
    """How well `visual` (HxWx3 uint8) looks like each task's painting, in [0, 1]. `image` is the model's
    input at the same size; without it detection scores 0."""
    visual = np.asarray(visual)
    if visual.ndim != 3 or visual.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 painting, got shape {visual.shape}")
    pixels = visual.astype(np.int16)
    spread = (pixels.max(axis=2) - pixels.min(axis=2)).mean()
    greyness = float(np.clip(1.0 - (spread - GREY_SPREAD) / (2 * GREY_SPREAD), 0.0, 1.0))
    median = np.median(pixels.reshape(-1, 3), axis=0)
    uniform = float((np.abs(pixels - median).max(axis=2) <= MATCH_TOLERANCE).mean())
    grey = pixels.mean(axis=2)
    extreme = float(((grey <= MASK_MARGIN) | (grey >= 255 - MASK_MARGIN)).mean())
    return {
        "segmentation": greyness * extreme,
        "detection": _same_as_input(visual, image),
        "depth": greyness * (1.0 - extreme),
        "classification": uniform * (1.0 - greyness),
    }


def read_task(visual: np.ndarray, image: np.ndarray | None = None, candidates=TASKS) -> str:
    """The task among `candidates` whose painting `visual` looks like (see the module docstring)."""
    scores = task_scores(visual, image)
    if "detection" in candidates and scores["detection"] >= SAME_AS_INPUT:
        return "detection"  # checked first: a grey input photo would otherwise look like a depth map
    return max(candidates, key=lambda task: scores[task])


def _same_as_input(visual: np.ndarray, image: np.ndarray | None) -> float:
    """Fraction of the painting's non-blue pixels that match the input image."""
    if image is None:
        return 0.0
    image = np.asarray(image)
    if image.shape != visual.shape:
        raise ValueError(f"the input image {image.shape} and the painting {visual.shape} differ in size")
    diff = np.abs(visual.astype(np.int16) - image.astype(np.int16)).max(axis=2)
    not_blue = blue_mask(visual) == 0
    if not not_blue.any():
        return 0.0
    return float((diff[not_blue] <= MATCH_TOLERANCE).mean())
