"""What every dataset adapter yields: `Example`s with raw ground truth, in a deterministic order.

An adapter reads one public dataset in its own on-disk format (COCO, ADE20K, NYUv2, Oxford-IIIT Pets, the
synthetic scenes of `icv-data synth`) and answers two questions:

- `index(tasks)`: which (image, task, category) examples exist? Cheap: it reads annotation files, not pixels,
  so that the builder can plan a balanced dataset before decoding a single image.
- `load(ref)`: the full `Example` for one entry of the index (image and raw ground truth).

`examples(tasks)` chains the two. The ground truth stays raw and exact (masks as bool, boxes in pixels,
depth in metres as float32): the builder resizes and paints it (training/build.py), the evaluation
(training/evaluate.py) scores against it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from icv_deploy.errors import IcvError
from icv_deploy.images import open_image
from icv_deploy.tasks.encodings import TASKS


@dataclass
class Example:
    """One image, one task, one category, and the raw ground truth of that task.

    image:    HxWx3 uint8 RGB.
    task:     one of icv_deploy.tasks.encodings.TASKS.
    category: the category the instruction names (None for depth).
    mask:     segmentation: bool HxW, True where the category is (also present classification examples of sources
              that know it, for the yes/no curriculum; None otherwise).
    boxes:    detection: float32 Nx4 (x0, y0, x1, y1) in pixels, x1/y1 exclusive (COCO x + w).
    depth:    depth: float32 HxW in metres, 0 where the sensor gave no value.
    present:  classification: is the category in the picture (False for negative pairs).
    source:   adapter kind ("coco", "ade20k", "nyuv2", "pets", "synth").
    image_id: stable id of the image inside its source (file stem or dataset id).
    """

    image: np.ndarray
    task: str
    category: str | None
    source: str
    image_id: str
    mask: np.ndarray | None = None
    boxes: np.ndarray | None = None
    depth: np.ndarray | None = None
    present: bool | None = None


@dataclass(frozen=True)
class ExampleRef:
    """An index entry: enough to plan a dataset and to `load` the example later. `key` is adapter-specific."""

    source: str
    image_id: str
    task: str
    category: str | None
    key: str
    present: bool | None = None


class Adapter:
    """Base class of the dataset adapters. Subclasses set `kind`, `tasks` and implement `index` and `load`."""

    kind: str = ""
    tasks: tuple[str, ...] = ()
    default_split: str | None = None

    def __init__(self, root: str | Path, split: str | None = None):
        self.root = Path(root)
        if not self.root.exists():
            raise IcvError(f"{self.kind} source not found: {self.root}")
        self.split = split if split is not None else self.default_split

    def index(self, tasks: Iterable[str] | None = None) -> list[ExampleRef]:
        raise NotImplementedError

    def load(self, ref: ExampleRef) -> Example:
        raise NotImplementedError

    def examples(self, tasks: Iterable[str] | None = None) -> Iterator[Example]:
        """All examples of the wanted tasks, in the (deterministic) order of `index`."""
        for ref in self.index(tasks):
            yield self.load(ref)

    def __len__(self) -> int:
        return len(self.index())

    def wanted(self, tasks: Iterable[str] | None) -> tuple[str, ...]:
        """The adapter's tasks that the caller asked for (all of them for None)."""
        if tasks is None:
            return self.tasks
        tasks = tuple(tasks)
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise IcvError(f"unknown task {unknown[0]!r}; tasks are {', '.join(TASKS)}")
        return tuple(t for t in self.tasks if t in tasks)


def open_source(kind: str, root: str | Path, split: str | None = None) -> Adapter:
    """The adapter of `kind` (coco, ade20k, nyuv2, pets, synth) on the dataset at `root`."""
    from . import ADAPTERS  # the registry imports this module: import it late

    if kind not in ADAPTERS:
        raise IcvError(f"unknown source kind {kind!r}; kinds are {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[kind](root, split=split)


# ---------------------------------------------------------------------------------------------------------
# Readers shared by the adapters: each turns a missing or corrupt file into one IcvError line naming it.


def read_rgb(path: Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB (grey, palette, CMYK and alpha converted).

    EXIF orientation is NOT applied: the datasets' annotations (COCO, ADE20K, Pets) are drawn on the stored
    pixel grid, so rotating the picture would move it away from its masks and boxes.
    """
    if not path.is_file():
        raise IcvError(f"missing image file: {path}")
    try:
        with open_image(path) as im:  # refuses empty, oversized and too-many-pixel files from the header
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError) as exc:
        raise IcvError(f"corrupt image file: {path} ({' '.join(str(exc).split())})") from None


def read_label_png(path: Path, what: str = "annotation") -> np.ndarray:
    """A label/annotation PNG as stored (uint8 or uint16 values, no colour conversion)."""
    if not path.is_file():
        raise IcvError(f"missing {what} file: {path}")
    open_image(path).close()  # the header's size, checked before OpenCV decodes anything
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise IcvError(f"corrupt {what} file: {path}")
    if array.ndim == 3:  # a label map saved as RGB: all channels carry the same value
        array = array[..., 0]
    return array


def read_json(path: Path, what: str = "annotation"):
    if not path.is_file():
        raise IcvError(f"missing {what} file: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IcvError(f"corrupt {what} file: {path} ({exc})") from None


def boxes_from_mask_ids(ids: np.ndarray, wanted: Iterable[int]) -> np.ndarray:
    """Tight boxes (x0, y0, x1 exclusive, y1 exclusive) of the pixels of each instance id in `wanted`."""
    boxes = []
    for k in wanted:
        ys, xs = np.nonzero(ids == k)
        if len(xs):
            boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
