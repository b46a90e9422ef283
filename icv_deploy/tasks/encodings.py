"""Visual encodings v(y): how each task's answer is painted as an image (docs/DESIGN.md 6).

Training draws its targets with these functions and the runtime's decoders (`decoders.py`) read them back,
so the two cannot drift apart. All images are HxWx3 uint8 RGB.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelFilesError

TASKS = ("segmentation", "detection", "depth", "classification")

# Pure blue outlines: the released InstructCV checkpoint was trained on blue detection boxes.
BOX_COLOR = (0, 0, 255)
# Outline width as a fraction of the long side (2 px at 256, 4 px at 512). A model trained with other outlines names
# its own fraction in icv_config.json (`box_line_fraction`): the demo models paint 3 px at 128 px, because a 1 px line
# is a quarter of the autoencoder's 4 x 4 pixel cell and a one-pass prediction that is unsure of it by a pixel paints
# it a third as blue (docs/DESIGN.md 6).
BOX_LINE_FRACTION = 1 / 128
# Depth is painted as grey = round(depth_m / DEPTH_MAX_M * 255), the same in all three channels.
DEPTH_MAX_M = 10.0

# Colours that classification instructions may name ("Show blue if ..., otherwise show black").
COLORS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "purple": (128, 0, 128),
    "orange": (255, 165, 0),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
    "pink": (255, 192, 203),
    "brown": (139, 69, 19),
}


def box_line_width(height: int, width: int, fraction: float | None = None) -> int:
    """Outline width in pixels: `fraction` of the long side (None: BOX_LINE_FRACTION), at least 1 pixel."""
    return max(1, int(round(max(height, width) * (BOX_LINE_FRACTION if fraction is None else fraction))))


def check_box_line_fraction(fraction, where: str) -> float | None:
    """A model config's `box_line_fraction` as a float (None stays None), or ModelFilesError naming `where`."""
    if fraction is None:
        return None
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 0.1:
        raise ModelFilesError(f"{where}: box_line_fraction must be a number in (0, 0.1], not {fraction!r}")
    return float(fraction)


def encode_segmentation(mask: np.ndarray) -> np.ndarray:
    """White (255) where the category is, black elsewhere."""
    mask = np.asarray(mask).astype(bool)
    return np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)


def encode_detection(image: np.ndarray, boxes: np.ndarray, line_fraction: float | None = None) -> np.ndarray:
    """The input image with a pure blue outline box around each instance.

    `boxes` are (x0, y0, x1, y1) in pixels, x1/y1 exclusive (COCO-style x + w). The outline is drawn inside
    the box, so the decoded box (outer edge of the outline) is the annotated one; `line_fraction`: its width
    (box_line_width).
    """
    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    h, w = out.shape[:2]
    lw = box_line_width(h, w, line_fraction)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        x0, y0 = int(np.clip(round(x0), 0, w - 1)), int(np.clip(round(y0), 0, h - 1))
        x1, y1 = int(np.clip(round(x1), x0 + 1, w)), int(np.clip(round(y1), y0 + 1, h))
        t = min(lw, max(1, (x1 - x0) // 2), max(1, (y1 - y0) // 2))
        out[y0:y0 + t, x0:x1] = BOX_COLOR
        out[y1 - t:y1, x0:x1] = BOX_COLOR
        out[y0:y1, x0:x0 + t] = BOX_COLOR
        out[y0:y1, x1 - t:x1] = BOX_COLOR
    return out


def encode_depth(depth_m: np.ndarray, max_depth: float = DEPTH_MAX_M) -> np.ndarray:
    """Grey image, value round(depth / max_depth * 255); invalid depth (<= 0, NaN) paints 0."""
    d = np.nan_to_num(np.asarray(depth_m, dtype=np.float64), nan=0.0, posinf=max_depth, neginf=0.0)
    grey = np.clip(np.round(d / max_depth * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def encode_classification(present: bool, size: tuple[int, int], color_if_present: str = "blue", color_if_absent: str = "black") -> np.ndarray:
    """A solid block of the first colour if the category is present, of the second otherwise. `size` is (H, W)."""
    name = color_if_present if present else color_if_absent
    return np.broadcast_to(np.array(COLORS[name], dtype=np.uint8), (*size, 3)).copy()

