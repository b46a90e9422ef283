"""Synthetic scenes written by `icv-data synth` (format: training/synthetic.py): all four tasks.

Examples per scene: depth (one); segmentation and detection, one per category present (the mask is the
union of that category's instances, boxes one per instance, tight around its visible pixels); classification:
one positive per category present and as many negatives (categories absent from the scene, picked
deterministically from the scene id) when there are enough absent categories.

Splits: the default (None or "all") is every scene; "train" / "test" split by scene index (every tenth
scene, index % 10 == 9, is test). For a separate evaluation set, prefer a folder rendered with another seed.
"""

from __future__ import annotations

import zlib

import numpy as np

from icv_deploy.errors import IcvError

from ..synthetic import CATEGORIES, FORMAT
from .base import Adapter, Example, ExampleRef, read_json, read_label_png, read_rgb


class SynthAdapter(Adapter):
    kind = "synth"
    tasks = ("segmentation", "detection", "depth", "classification")
    default_split = None

    def __init__(self, root, split=None):
        super().__init__(root, split)
        self.split = {"val": "test"}.get(self.split, self.split)
        meta = read_json(self.root / "synth.json", what="synth metadata")
        if meta.get("format") != FORMAT:
            raise IcvError(f"{self.root / 'synth.json'}: format {meta.get('format')!r}, expected {FORMAT!r}")
        self.categories = tuple(meta.get("categories", CATEGORIES))
        if self.split not in (None, "all", "train", "test"):
            raise IcvError(f"synth split must be all, train or test, not {self.split!r}")
        ids = sorted(p.stem for p in (self.root / "annotations").glob("*.json"))
        if self.split in ("train", "test"):
            ids = [i for i in ids if (int(i) % 10 == 9) == (self.split == "test")]
        self.ids = ids
        self._annotations: dict[str, dict] = {}

    def annotation(self, image_id: str) -> dict:
        if image_id not in self._annotations:
            path = self.root / "annotations" / f"{image_id}.json"
            ann = read_json(path)
            if not isinstance(ann, dict) or not isinstance(ann.get("objects"), list):
                raise IcvError(f"corrupt annotation file: {path} (no objects list)")
            self._annotations[image_id] = ann
        return self._annotations[image_id]

    def index(self, tasks=None):
        tasks = self.wanted(tasks)
        refs = []
        for image_id in self.ids:
            present = sorted({o["category"] for o in self.annotation(image_id)["objects"]})
            if "depth" in tasks:
                refs.append(ExampleRef(self.kind, image_id, "depth", None, image_id))
            for category in present:
                for task in ("segmentation", "detection"):
                    if task in tasks:
                        refs.append(ExampleRef(self.kind, image_id, task, category, image_id))
            if "classification" in tasks:
                absent = [c for c in self.categories if c not in present]
                start = zlib.crc32(image_id.encode()) % max(1, len(absent))
                negatives = (absent[start:] + absent[:start])[: len(present)]
                refs += [ExampleRef(self.kind, image_id, "classification", c, image_id, present=True) for c in present]
                refs += [ExampleRef(self.kind, image_id, "classification", c, image_id, present=False) for c in negatives]
        return refs

    def load(self, ref: ExampleRef) -> Example:
        image_id = ref.key
        image = read_rgb(self.root / "rgb" / f"{image_id}.png")
        example = Example(image=image, task=ref.task, category=ref.category, source=self.kind, image_id=image_id)
        objects = [o for o in self.annotation(image_id)["objects"] if o["category"] == ref.category]
        if ref.task == "depth":
            depth_mm = read_label_png(self.root / "depth" / f"{image_id}.png", what="depth")
            if depth_mm.dtype != np.uint16 or depth_mm.shape != image.shape[:2]:
                raise IcvError(f"corrupt depth file: {self.root / 'depth' / image_id}.png")
            example.depth = depth_mm.astype(np.float32) / 1000.0
        elif ref.task == "segmentation":
            example.mask = self.category_mask(image_id, objects, image.shape[:2])
        elif ref.task == "detection":
            example.boxes = np.asarray([o["bbox"] for o in objects], dtype=np.float32).reshape(-1, 4)
        else:
            example.present = bool(ref.present)
            if example.present:  # where it is: the yes/no curriculum paints it (training/yes_no_curriculum.py)
                example.mask = self.category_mask(image_id, objects, image.shape[:2])
        return example

    def category_mask(self, image_id: str, objects: list[dict], shape: tuple[int, int]) -> np.ndarray:
        """The union of the objects' instance masks."""
        instances = read_label_png(self.root / "instances" / f"{image_id}.png", what="instance mask")
        if instances.shape != shape:
            raise IcvError(f"corrupt instance mask file: {self.root / 'instances' / image_id}.png")
        return np.isin(instances, [o["id"] for o in objects])
