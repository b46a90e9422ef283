"""One training pair from one Example: the resized input image and its visual target v(y).

Resize policy (the same geometry for the image and its ground truth):
- `size` > 0: scale so that the SHORT side is `size`, then centre-crop a `size` x `size` square.
  image: area interpolation when shrinking, bilinear when enlarging;
  mask:  the same interpolation on the 0/1 mask, then >= 0.5 (so thin parts survive shrinking better than
         nearest-neighbour would);
  depth: nearest neighbour (centre-aligned), so a pixel's depth is always a measured value and invalid (0)
         pixels never blend into valid ones;
  boxes: scaled, shifted by the crop and clipped to it; a box that keeps less than 30% of its area inside
         the crop is dropped.
- `size` == 0: keep the native size (no resize, no crop).
A pair whose ground truth the crop removes (an empty mask, no box left) is skipped (None).
The target is painted by icv_deploy.tasks.encodings only. Training-time augmentation (random flip,
resize to 256-288 and crop 256) is NOT done here: training/augment.py applies it in training/train.py,
identically to the input and the target.
"""

from __future__ import annotations

import cv2
import numpy as np

from icv_deploy.tasks.encodings import encode_classification, encode_depth, encode_detection, encode_segmentation

from .datasets.base import Example
from .yes_no_curriculum import grown_answer

MIN_BOX_AREA_KEPT = 0.3


def geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(resized height, resized width, crop top, crop left) for the short-side-then-centre-crop policy."""
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    return new_h, new_w, (new_h - size) // 2, (new_w - size) // 2


def _resize(array: np.ndarray, new_h: int, new_w: int, interpolation: int | None = None) -> np.ndarray:
    if interpolation is None:
        shrinking = new_h * new_w < array.shape[0] * array.shape[1]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(array, (new_w, new_h), interpolation=interpolation)


def transform_boxes(boxes: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    new_h, new_w, top, left = geometry(height, width, size)
    scale = np.array([new_w / width, new_h / height] * 2, dtype=np.float64)
    shift = np.array([left, top] * 2, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale - shift
    clipped = np.clip(boxes, 0, size)
    area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # noqa: E731
    keep = (area(clipped) >= MIN_BOX_AREA_KEPT * area(boxes)) & (clipped[:, 2] - clipped[:, 0] >= 1) & (clipped[:, 3] - clipped[:, 1] >= 1)
    return clipped[keep].astype(np.float32)


def resized(example: Example, size: int) -> Example:
    """A copy of the example with image and ground truth under the resize policy (unchanged for size 0)."""
    if not size:
        return example
    h, w = example.image.shape[:2]
    new_h, new_w, top, left = geometry(h, w, size)
    crop = (slice(top, top + size), slice(left, left + size))
    out = Example(image=_resize(example.image, new_h, new_w)[crop], task=example.task, category=example.category,
                  source=example.source, image_id=example.image_id, present=example.present)
    if example.mask is not None:
        out.mask = _resize(example.mask.astype(np.float32), new_h, new_w)[crop] >= 0.5
    if example.depth is not None:
        out.depth = _resize(example.depth.astype(np.float32), new_h, new_w, cv2.INTER_NEAREST_EXACT)[crop]
    if example.boxes is not None:
        out.boxes = transform_boxes(example.boxes, h, w, size)
    return out


def make_pair(example: Example, size: int, color1: str | None = None, color2: str | None = None,
              yes_radius: int | None = None, line_fraction: float | None = None):
    """(input image, target image), both uint8 HxWx3 RGB of the same size, or None when nothing is left to show.
    `yes_radius` (training/yes_no_curriculum.py): a present classification example whose source gives the
    category's mask is painted as that mask grown by this many pixels instead of the solid card. `line_fraction`: the
    detection outlines' width (encodings.box_line_width)."""
    example = resized(example, size)
    image = np.ascontiguousarray(example.image)
    if example.task == "segmentation":
        if not example.mask.any():
            return None
        target = encode_segmentation(example.mask)
    elif example.task == "detection":
        if len(example.boxes) == 0:
            return None
        target = encode_detection(image, example.boxes, line_fraction)
    elif example.task == "depth":
        target = encode_depth(example.depth)
    elif example.task == "classification" and yes_radius is not None and example.present and example.mask is not None:
        target = grown_answer(example.mask, yes_radius, color1, color2)
    elif example.task == "classification":
        target = encode_classification(bool(example.present), image.shape[:2], color1, color2)
    else:
        raise ValueError(f"unknown task {example.task!r}")
    return image, target
