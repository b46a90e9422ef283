"""Pictures people look at: a task's answer drawn on the input image, and labelled grids of pictures.

All take and return HxWx3 uint8 RGB. Every picture explains itself: depth carries a colour bar in metres, a detection
without boxes says so, a yes/no card names the category, and grids label their columns in a font large enough to read.
Text is drawn with Pillow's bundled font (FreeType), so no system fonts are needed.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from .encodings import DEPTH_MAX_M

# Box colours: green for confident boxes, red for the rest.
CONFIDENT_COLOR = (0, 200, 0)
UNSURE_COLOR = (230, 0, 0)
CONFIDENT_SCORE = 0.5
# Depth colour map: perceptually uniform, dark (near) to bright (far).
DEPTH_COLORMAP = "magma"
NO_BOXES_CAPTION = "no boxes found"
MASK_COLOR = (30, 90, 255)  # segmentation overlay: a blue no synthetic object has (a red tint vanishes on a red ball)
FRAME_COLOR = (150, 150, 150)  # thin frame around grid tiles: white targets stay visible on the white page
TILE_HEIGHT = 256  # grids enlarge small tiles (128 px model outputs) to at least this height, so text and pixels read


# ---- text ---------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def font(size: int):
    """Pillow's bundled font at `size` pixels (its fixed bitmap font where Pillow was built without FreeType)."""
    return ImageFont.load_default(size=size)


def text_size(size_for: int) -> int:
    """A readable font size for a picture whose smaller side is `size_for` pixels."""
    return int(np.clip(round(size_for / 12), 11, 32))


def _wrap(text: str, width: int, size: int) -> list[str]:
    """Greedy word wrap to `width` pixels (a word longer than a line gets a line of its own)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font(size).getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def text_block(text: str, width: int, size: int, color=(0, 0, 0), background=(255, 255, 255), max_lines: int = 3,
               center: bool = False, pad: int = 4) -> np.ndarray:
    """`text` wrapped into a `width`-pixel-wide strip of `background` (at most `max_lines`, the last one cut with '...')."""
    lines = _wrap(text, width - 2 * pad, size)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1] + " ..."
    line_h = round(size * 1.25)
    block = Image.new("RGB", (width, 2 * pad + line_h * len(lines)), tuple(background))
    draw = ImageDraw.Draw(block)
    for i, line in enumerate(lines):
        x = (width - font(size).getlength(line)) / 2 if center else pad
        draw.text((max(pad, x), pad + i * line_h), line, fill=tuple(color), font=font(size))
    return np.asarray(block)


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


def _font_scale(height: int, width: int) -> float:
    return max(0.35, min(height, width) / 500)


def overlay_mask(image: np.ndarray, mask: np.ndarray, color=MASK_COLOR, alpha: float = 0.5) -> np.ndarray:
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
    least CONFIDENT_SCORE, red below. With no box at all, a caption in the top-left corner says so."""
    out = _rgb(image).copy()
    h, w = out.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        size = text_size(min(h, w))
        tag = text_block(NO_BOXES_CAPTION, round(font(size).getlength(NO_BOXES_CAPTION)) + 8, size, color=(255, 255, 255),
                         background=UNSURE_COLOR, max_lines=1)[: h, : w]
        out[: tag.shape[0], : tag.shape[1]] = tag
        return out
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


def depth_picture(depth_m: np.ndarray, max_depth: float = DEPTH_MAX_M) -> np.ndarray:
    """`colorize_depth` with a colour bar on its right: far (max_depth) at the top, 0 m at the bottom, ticks labelled
    in metres. The depth map keeps its size; the bar adds columns."""
    coloured = colorize_depth(depth_m, max_depth)
    h = coloured.shape[0]
    size = text_size(max(h, 60) // 1.5)
    margin = size // 2 + 2  # room for the half-height of the top and bottom labels
    bar_h, bar_w, gap = max(2, h - 2 * margin), max(8, size), max(4, size // 3)
    ticks = np.linspace(0.0, max_depth, 5 if bar_h >= 8 * size else 3 if bar_h >= 3 * size else 2)
    labels = [f"{t:g} m" for t in ticks]
    label_w = max(round(font(size).getlength(t)) for t in labels) + 4
    panel = Image.new("RGB", (gap + bar_w + 4 + label_w, h), (255, 255, 255))
    lut = colorize_depth(np.linspace(max_depth, 0.0, bar_h, dtype=np.float32)[:, None], max_depth)
    panel.paste(Image.fromarray(np.ascontiguousarray(np.repeat(lut, bar_w, axis=1))), (gap, margin))
    draw = ImageDraw.Draw(panel)
    for value, label in zip(ticks, labels):
        y = margin + round((1.0 - value / max_depth) * (bar_h - 1))
        draw.line([(gap + bar_w, y), (gap + bar_w + 3, y)], fill=(0, 0, 0))
        top, bottom = font(size).getbbox(label)[1::2]
        draw.text((gap + bar_w + 5, y - (top + bottom) / 2), label, fill=(0, 0, 0), font=font(size))  # centred on its tick
    return np.concatenate([coloured, np.asarray(panel)], axis=1)


def classification_card(image: np.ndarray, present: bool, score: float, category: str | None) -> np.ndarray:
    """The image under a banner 'cat: yes (score +0.83)', green for yes and red for no."""
    image = _rgb(image)
    h, w = image.shape[:2]
    text = f"{category or 'category'}: {'yes' if present else 'no'} (score {score:+.2f})"
    banner = text_block(text, w, text_size(min(h, w)), color=(255, 255, 255),
                        background=CONFIDENT_COLOR if present else UNSURE_COLOR, max_lines=2)
    return np.concatenate([banner, image], axis=0)


# ---- grids of labelled pictures -----------------------------------------------------------------------------------
def _to_height(picture: np.ndarray, height: int) -> np.ndarray:
    """Scaled to `height`, aspect kept: enlarged with nearest neighbour (model pixels stay visible), shrunk by area."""
    picture = _rgb(picture)
    h, w = picture.shape[:2]
    if h == height:
        return picture
    interpolation = cv2.INTER_NEAREST if height > h else cv2.INTER_AREA
    return cv2.resize(picture, (max(1, round(w * height / h)), height), interpolation=interpolation)


def labelled_grid(rows: list[list[np.ndarray]], column_labels: list[str] | None = None, row_labels: list[str] | None = None,
                  row_captions: list[str] | None = None, tile_height: int = TILE_HEIGHT, gap: int = 10) -> np.ndarray:
    """Pictures in rows and columns on a white page, each in a thin grey frame, every one scaled to `tile_height`.

    `column_labels` head the columns (e.g. input | target | prediction), `row_labels` stand left of the rows (e.g. an
    image's name) and `row_captions` run under each row (e.g. its instruction). A column is as wide as its widest picture.
    """
    tiles = [[_to_height(p, tile_height) for p in row] for row in rows]
    n_cols = max((len(r) for r in tiles), default=0)
    col_w = [max((r[c].shape[1] for r in tiles if c < len(r)), default=tile_height) for c in range(n_cols)]
    size = text_size(tile_height)
    label_w = round(tile_height * 0.6) if row_labels else 0
    x_of = np.cumsum([gap + label_w] + [w + gap for w in col_w]).tolist()
    width = x_of[-1]
    header = [text_block(t, w, size, max_lines=3, center=True) for t, w in zip(column_labels or [], col_w)]
    header_h = max((b.shape[0] for b in header), default=0)
    captions = [text_block(t, width - 2 * gap, size, max_lines=3) for t in (row_captions or [])]
    heights = [tile_height + (captions[r].shape[0] if r < len(captions) else 0) for r in range(len(tiles))]
    page = Image.new("RGB", (width, gap + header_h + sum(h + gap for h in heights)), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    for c, block in enumerate(header):
        page.paste(Image.fromarray(block), (x_of[c], gap))
    y = gap + header_h
    for r, row in enumerate(tiles):
        if row_labels and r < len(row_labels):
            block = text_block(row_labels[r], label_w, size, max_lines=4)
            page.paste(Image.fromarray(block), (gap, y + (tile_height - block.shape[0]) // 2))
        for c, tile in enumerate(row):
            x = x_of[c] + (col_w[c] - tile.shape[1]) // 2
            page.paste(Image.fromarray(tile), (x, y))
            draw.rectangle([x - 1, y - 1, x + tile.shape[1], y + tile_height], outline=FRAME_COLOR)
        if r < len(captions):
            page.paste(Image.fromarray(captions[r]), (gap, y + tile_height))
        y += heights[r] + gap
    return np.array(page)  # writable, unlike a view of the PIL image
