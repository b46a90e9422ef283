"""`icv-data grid`: a picture of a built dataset for a person to look at.

One row per task; each cell is an input image beside its target v(y), with the instruction written below.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from icv_deploy.atomic import atomic_path
from icv_deploy.tasks.encodings import TASKS

CELL = 128  # pixels per picture in the grid
CAPTION_LINES = 3


def _caption(draw: ImageDraw.ImageDraw, xy, text: str, width_chars: int, font) -> None:
    lines = textwrap.wrap(text, width_chars)[:CAPTION_LINES]
    for i, line in enumerate(lines):
        draw.text((xy[0], xy[1] + i * 12), line, fill=(0, 0, 0), font=font)


def make_grid(dataset, per_task: int = 4, cell: int = CELL) -> Image.Image:
    """The grid as a PIL image: rows = tasks present in the dataset, `per_task` (input, target) pairs each."""
    tasks = [t for t in TASKS if t in set(dataset["task"])]
    rows_of = {t: [i for i, task in enumerate(dataset["task"]) if task == t][:per_task] for t in tasks}
    label_w, caption_h, gap = 110, 12 * CAPTION_LINES + 4, 6
    pair_w = 2 * cell + gap
    width = label_w + per_task * (pair_w + gap)
    height = len(tasks) * (cell + caption_h + gap) + gap
    grid = Image.new("RGB", (width, max(height, 1)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for r, task in enumerate(tasks):
        y = gap + r * (cell + caption_h + gap)
        draw.text((6, y + cell // 2 - 6), task, fill=(0, 0, 0), font=font)
        for c, i in enumerate(rows_of[task]):
            row = dataset[i]
            x = label_w + c * (pair_w + gap)
            grid.paste(row["input_image"].convert("RGB").resize((cell, cell)), (x, y))
            grid.paste(row["edited_image"].convert("RGB").resize((cell, cell), Image.NEAREST), (x + cell + gap, y))
            _caption(draw, (x, y + cell + 2), row["edit_prompt"], width_chars=max(20, pair_w // 6), font=font)
    return grid


def save_grid(dataset, out: str | Path, per_task: int = 4, cell: int = CELL) -> Path:
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:
        make_grid(dataset, per_task, cell).save(tmp, format="PNG")
    return out


def as_array(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
