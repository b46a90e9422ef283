"""MS-COCO instances: segmentation and detection, one example per (image, category present).

On disk (ROOT is the COCO folder):
    ROOT/annotations/instances_{split}.json      e.g. instances_train2017.json, instances_val2017.json
    ROOT/{split}/{file_name}                       the images the JSON names

Masks are decoded by pycocotools (`annToMask`: polygons, compressed RLE and uncompressed RLE).
Crowd annotations (iscrowd=1, one RLE over a group of objects): their pixels belong to the segmentation
mask of the category (they are that category), but they give no detection box (a crowd box surrounds many
objects; COCO evaluation ignores them too). An (image, category) with only crowd annotations therefore has
a segmentation example and no detection example.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np

from icv_deploy.errors import IcvError

from .base import Adapter, Example, ExampleRef, read_rgb


class CocoAdapter(Adapter):
    kind = "coco"
    tasks = ("segmentation", "detection")
    default_split = "train2017"  # any NAME with annotations/instances_NAME.json

    def __init__(self, root, split=None):
        super().__init__(root, split)
        # generic split names: "test" is val2017 (COCO's test annotations are not public)
        self.split = {"train": "train2017", "val": "val2017", "test": "val2017"}.get(self.split, self.split)
        self.annotation_file = self.root / "annotations" / f"instances_{self.split}.json"
        self.image_dir = self.root / self.split
        self._coco = None

    @property
    def coco(self):
        if self._coco is None:
            from pycocotools.coco import COCO

            if not self.annotation_file.is_file():
                raise IcvError(f"missing annotation file: {self.annotation_file}")
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
                    self._coco = COCO(str(self.annotation_file))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AssertionError) as exc:
                raise IcvError(f"corrupt annotation file: {self.annotation_file} ({type(exc).__name__}: {exc})") from None
        return self._coco

    def category_name(self, category_id: int) -> str:
        return self.coco.cats[category_id]["name"]

    def index(self, tasks=None):
        tasks = self.wanted(tasks)
        coco = self.coco
        refs = []
        for image_id in sorted(coco.imgs):
            anns = coco.imgToAnns.get(image_id, [])
            for category_id in sorted({a["category_id"] for a in anns}):
                name = self.category_name(category_id)
                of_category = [a for a in anns if a["category_id"] == category_id]
                key = f"{image_id}:{category_id}"
                if "segmentation" in tasks and any(a.get("segmentation") for a in of_category):
                    refs.append(ExampleRef(self.kind, str(image_id), "segmentation", name, key))
                if "detection" in tasks and any(not a.get("iscrowd", 0) for a in of_category):
                    refs.append(ExampleRef(self.kind, str(image_id), "detection", name, key))
        return refs

    def load(self, ref: ExampleRef) -> Example:
        coco = self.coco
        image_id, category_id = (int(v) for v in ref.key.split(":"))
        info = coco.imgs[image_id]
        image = read_rgb(self.image_dir / info["file_name"])
        h, w = image.shape[:2]
        if (info.get("height", h), info.get("width", w)) != (h, w):
            raise IcvError(
                f"image {self.image_dir / info['file_name']} is {w}x{h} but {self.annotation_file} says "
                f"{info.get('width')}x{info.get('height')}"
            )
        anns = [a for a in coco.imgToAnns.get(image_id, []) if a["category_id"] == category_id]
        example = Example(image=image, task=ref.task, category=ref.category, source=self.kind, image_id=ref.image_id)
        if ref.task == "segmentation":
            mask = np.zeros((h, w), dtype=bool)
            for ann in anns:
                if ann.get("segmentation"):
                    try:
                        mask |= coco.annToMask(ann).astype(bool)
                    except (TypeError, ValueError, KeyError, IndexError) as exc:
                        raise IcvError(f"corrupt segmentation of annotation {ann.get('id')} in {self.annotation_file} ({exc})") from None
            example.mask = mask
        else:
            boxes = [a["bbox"] for a in anns if not a.get("iscrowd", 0)]
            xywh = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
            example.boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        return example
