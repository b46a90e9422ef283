"""Yes/no answers taught through the mask: a training-only curriculum for classification targets.

The contract's answer to "Show blue if the picture has a cat, otherwise show black" is one solid block of the
named colour (DESIGN.md 6): every output pixel depends on whether the category is ANYWHERE in the picture. Trained
on that target directly, the demo models stay at chance, even on their own training scenes and with one colour
pair only (benchmarks/results/underfit-2026-12-03/), although their masks already know where the category is.
The curriculum builds the missing route from "these pixels are the cat" to "the picture has a cat": the "present"
target starts as the category's mask painted in the first colour on the second, and is grown phase by phase (the
mask dilated by a radius in pixels) until it is the solid block of the contract; "absent" targets are the solid
second colour throughout. Each phase is an `icv-data build --yes-radius R` dataset and a short `icv-train` run
from the previous phase's model; the last phase trains on the contract's own targets.
"""

from __future__ import annotations

import cv2
import numpy as np

from icv_deploy.tasks.encodings import COLORS


def grown_answer(mask: np.ndarray, radius: int, color_if_present: str, color_if_absent: str) -> np.ndarray:
    """HxWx3 uint8: the mask grown by `radius` pixels (a disc; 0 keeps it as it is) in the first colour, every
    other pixel the second."""
    mask = np.asarray(mask).astype(np.uint8)
    if radius < 0:
        raise ValueError(f"radius must be at least 0, not {radius}")
    if radius > 0:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
    target = np.empty((*mask.shape, 3), np.uint8)
    target[:] = COLORS[color_if_absent]
    target[mask > 0] = COLORS[color_if_present]
    return target
