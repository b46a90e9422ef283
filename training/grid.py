"""`icv-data grid`: a picture of a built dataset for a person to look at.

One row per task; each cell is an input image beside its target v(y), with the instruction written below. The
columns are labelled input | target, and every picture has a thin grey frame, so white targets (a segmentation
mask covering the image, a white classification block) stay visible on the white page.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from icv_deploy.atomic import atomic_path
from icv_deploy.tasks.encodings import TASKS
from icv_deploy.tasks.visualize import FRAME_COLOR, font

CELL = 128  # pixels per picture in the grid
CAPTION_LINES = 3
TEXT_SIZE = 14  # pixels: readable beside 128-pixel pictures
LINE = TEXT_SIZE + 3


def _caption(draw: ImageDraw.ImageDraw, xy, text: str, width_chars: int) -> None:
    lines = textwrap.wrap(text, width_chars)[:CAPTION_LINES]
    for i, line in enumerate(lines):
        draw.text((xy[0], xy[1] + i * LINE), line, fill=(0, 0, 0), font=font(TEXT_SIZE))


def _framed(grid: Image.Image, draw: ImageDraw.ImageDraw, picture: Image.Image, xy) -> None:
    grid.paste(picture, xy)
    draw.rectangle([xy[0] - 1, xy[1] - 1, xy[0] + picture.width, xy[1] + picture.height], outline=FRAME_COLOR)


def make_grid(dataset, per_task: int = 4, cell: int = CELL) -> Image.Image:
    """The grid as a PIL image: rows = tasks present in the dataset, `per_task` (input, target) pairs each."""
    tasks = [t for t in TASKS if t in set(dataset["task"])]
    rows_of = {t: [i for i, task in enumerate(dataset["task"]) if task == t][:per_task] for t in tasks}
    label_w, caption_h, gap = 120, LINE * CAPTION_LINES + 4, 6
    header_h = LINE + 4
    pair_w = 2 * cell + gap
    width = label_w + per_task * (pair_w + gap)
    height = header_h + len(tasks) * (cell + caption_h + gap) + gap
    grid = Image.new("RGB", (width, max(height, 1)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c in range(per_task):  # column labels: input | target over every pair
        x = label_w + c * (pair_w + gap)
        for k, name in enumerate(("input", "target")):
            text_x = x + k * (cell + gap) + (cell - font(TEXT_SIZE).getlength(name)) / 2
            draw.text((text_x, 2), name, fill=(0, 0, 0), font=font(TEXT_SIZE))
    for r, task in enumerate(tasks):
        y = header_h + gap + r * (cell + caption_h + gap)
        draw.text((6, y + cell // 2 - LINE // 2), task, fill=(0, 0, 0), font=font(TEXT_SIZE))
        for c, i in enumerate(rows_of[task]):
            row = dataset[i]
            x = label_w + c * (pair_w + gap)
            _framed(grid, draw, row["input_image"].convert("RGB").resize((cell, cell)), (x, y))
            _framed(grid, draw, row["edited_image"].convert("RGB").resize((cell, cell), Image.NEAREST), (x + cell + gap, y))
            _caption(draw, (x, y + cell + 3), row["edit_prompt"], width_chars=max(20, pair_w // 8))
    return grid


def save_grid(dataset, out: str | Path, per_task: int = 4, cell: int = CELL) -> Path:
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:
        make_grid(dataset, per_task, cell).save(tmp, format="PNG")
    return out


def as_array(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
