"""Pictures people look at: a task's answer drawn on the input image. All take and return HxWx3 uint8 RGB."""

from __future__ import annotations

import cv2
import numpy as np
from matplotlib import colormaps

from .encodings import DEPTH_MAX_M

# Box colours: green for confident boxes, red for the rest.
CONFIDENT_COLOR = (0, 200, 0)
UNSURE_COLOR = (230, 0, 0)
CONFIDENT_SCORE = 0.5
# Depth colour map: perceptually uniform, dark (near) to bright (far).
DEPTH_COLORMAP = "magma"


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


def _font_scale(height: int, width: int) -> float:
    return max(0.35, min(height, width) / 500)


def overlay_mask(image: np.ndarray, mask: np.ndarray, color=(255, 0, 0), alpha: float = 0.5) -> np.ndarray:
    """Blend `color` into the pixels where `mask` is true; the others are unchanged."""
    out = _rgb(image).copy()
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != out.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {out.shape[:2]}")
    blended = (1.0 - alpha) * out[mask].astype(np.float32) + alpha * np.array(color, dtype=np.float32)
    out[mask] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    return out


def draw_boxes(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray | None = None,
               label: str | None = None) -> np.ndarray:
    """Rectangles (x0, y0, x1, y1, x1/y1 exclusive) with 'label 0.87' above each; green when the score is at
    least CONFIDENT_SCORE, red below."""
    out = _rgb(image).copy()
    h, w = out.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.ones(len(boxes)) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    thickness = max(2, round(max(h, w) / 200))
    font_scale = _font_scale(h, w)
    for (x0, y0, x1, y1), score in zip(boxes, scores):
        color = CONFIDENT_COLOR if score >= CONFIDENT_SCORE else UNSURE_COLOR
        p0 = (int(round(x0)), int(round(y0)))
        p1 = (int(round(x1)) - 1, int(round(y1)) - 1)
        cv2.rectangle(out, p0, p1, color, thickness)
        text = f"{label} {score:.2f}" if label else f"{score:.2f}"
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        # A filled tag in the box colour, above the box (inside it when the box touches the top).
        top = p0[1] - th - baseline - 2 if p0[1] - th - baseline - 2 >= 0 else p0[1]
        left = min(max(0, p0[0]), max(0, w - tw - 4))
        cv2.rectangle(out, (left, top), (left + tw + 3, top + th + baseline + 1), color, cv2.FILLED)
        cv2.putText(out, text, (left + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


def colorize_depth(depth_m: np.ndarray, max_depth: float = DEPTH_MAX_M) -> np.ndarray:
    """Depth through the 'magma' colour map on a fixed scale 0..max_depth (comparable across images):
    near is dark, far is bright; the map's lightness rises monotonically with depth."""
    depth = np.nan_to_num(np.asarray(depth_m, dtype=np.float32), nan=0.0)
    levels = np.clip(depth / max_depth, 0.0, 1.0)
    lut = (colormaps[DEPTH_COLORMAP](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    return lut[np.round(levels * 255).astype(np.int64)]


def classification_card(image: np.ndarray, present: bool, score: float, category: str | None) -> np.ndarray:
    """The image under a banner 'cat: yes (0.83)', green for yes and red for no."""
    image = _rgb(image)
    h, w = image.shape[:2]
    font_scale = _font_scale(h, w) * 1.2
    text = f"{category or 'category'}: {'yes' if present else 'no'} ({score:.2f})"
    (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
    banner_h = th + baseline + 10
    banner = np.full((banner_h, w, 3), CONFIDENT_COLOR if present else UNSURE_COLOR, dtype=np.uint8)
    cv2.putText(banner, text, (5, 5 + th), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([banner, image], axis=0)
