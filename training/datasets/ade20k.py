"""ADE20K SceneParsing (ADEChallengeData2016): semantic segmentation, one example per (image, class present).

On disk (ROOT is the `ADEChallengeData2016` folder, or a folder that contains it):
    ROOT/images/{training,validation}/ADE_*.jpg
    ROOT/annotations/{training,validation}/ADE_*.png    class index per pixel: 1..150, 0 = "other" (ignored)

The 150 class names are those of the benchmark's objectInfo150 (the first of each synonym list), in index
order: annotation value k is CLASS_NAMES[k - 1].
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from icv_deploy.errors import IcvError

from .base import Adapter, Example, ExampleRef, read_label_png, read_rgb

CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
assert len(CLASS_NAMES) == 150

SPLIT_ALIASES = {"train": "training", "val": "validation", "test": "validation", "validation": "validation", "training": "training"}


class Ade20kAdapter(Adapter):
    kind = "ade20k"
    tasks = ("segmentation",)
    default_split = "training"

    def __init__(self, root, split=None):
        super().__init__(root, split)
        if (self.root / "ADEChallengeData2016").is_dir():
            self.root = self.root / "ADEChallengeData2016"
        if self.split not in SPLIT_ALIASES:
            raise IcvError(f"ade20k split must be training or validation, not {self.split!r}")
        self.split = SPLIT_ALIASES[self.split]
        self.image_dir = self.root / "images" / self.split
        self.annotation_dir = self.root / "annotations" / self.split
        for folder in (self.image_dir, self.annotation_dir):
            if not folder.is_dir():
                raise IcvError(f"missing ADE20K folder: {folder}")

    def annotation(self, stem: str) -> np.ndarray:
        labels = read_label_png(self.annotation_dir / f"{stem}.png")
        if labels.max(initial=0) > len(CLASS_NAMES):
            raise IcvError(f"corrupt annotation file: {self.annotation_dir / stem}.png (value {labels.max()} > 150)")
        return labels

    def index(self, tasks=None):
        if not self.wanted(tasks):
            return []
        # Which classes each image shows needs the annotation PNGs (small; read once per build).
        refs = []
        stems = sorted(p.stem for p in self.image_dir.glob("*.jpg"))
        for stem in tqdm(stems, desc="ade20k index", unit="img", leave=False, disable=len(stems) < 500):
            for value in np.unique(self.annotation(stem)):
                if value > 0:
                    refs.append(ExampleRef(self.kind, stem, "segmentation", CLASS_NAMES[value - 1], f"{stem}:{value}"))
        return refs

    def load(self, ref: ExampleRef) -> Example:
        stem, value = ref.key.rsplit(":", 1)
        image = read_rgb(self.image_dir / f"{stem}.jpg")
        labels = self.annotation(stem)
        if labels.shape != image.shape[:2]:
            raise IcvError(f"annotation {self.annotation_dir / stem}.png is {labels.shape[::-1]}, its image {image.shape[1::-1]}")
        return Example(image=image, task="segmentation", category=ref.category, source=self.kind,
                       image_id=stem, mask=labels == int(value))
