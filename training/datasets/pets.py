"""Oxford-IIIT Pets: classification (with negative pairs) and segmentation of the pet, named by its breed.

On disk (ROOT is the folder holding `images/` and `annotations/`):
    ROOT/images/{Name}_{n}.jpg                      e.g. Abyssinian_12.jpg, american_pit_bull_terrier_1.jpg
    ROOT/annotations/trimaps/{Name}_{n}.png         1 = pet, 2 = background, 3 = border (undecided)
    ROOT/annotations/list.txt                       "Image CLASS-ID SPECIES BREED-ID" lines, '#' comments
    ROOT/annotations/trainval.txt, test.txt         the official splits, same line format

Splits: trainval (default), test, or all (list.txt). The breed name is the file name without its number,
underscores as spaces, case kept ("Abyssinian", "american pit bull terrier"; cats are capitalised in the
dataset). SPECIES 1 = cat, 2 = dog.

Examples per image: segmentation of the breed (mask = trimap value 1; the border band, value 3, is left out
of the mask: it straddles the outline), a positive classification (the breed) and a negative one: another
breed of the split, picked deterministically from the image name (the paper's "negative pairs").
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from icv_deploy.errors import IcvError

from .base import Adapter, Example, ExampleRef, read_label_png, read_rgb

SPECIES = {1: "cat", 2: "dog"}


def breed_from_stem(stem: str) -> str:
    """`Abyssinian_12` -> "Abyssinian", `american_pit_bull_terrier_1` -> "american pit bull terrier"."""
    return re.sub(r"_\d+$", "", stem).replace("_", " ")


class PetsAdapter(Adapter):
    kind = "pets"
    tasks = ("segmentation", "classification")
    default_split = "trainval"

    def __init__(self, root, split=None):
        super().__init__(root, split)
        self.split = {"train": "trainval", "val": "test"}.get(self.split, self.split)
        names = {"trainval": "trainval.txt", "test": "test.txt", "all": "list.txt"}
        if self.split not in names:
            raise IcvError(f"pets split must be trainval, test or all, not {self.split!r}")
        self.list_file = self.root / "annotations" / names[self.split]
        self.species = self._read_list()
        self.breeds = sorted({breed_from_stem(s) for s in self.species})

    def _read_list(self) -> dict[str, str]:
        """image stem -> species name, from the split file."""
        if not self.list_file.is_file():
            raise IcvError(f"missing annotation file: {self.list_file}")
        species = {}
        for number, line in enumerate(self.list_file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) < 3 or not fields[2].isdigit() or int(fields[2]) not in SPECIES:
                raise IcvError(f"corrupt annotation file: {self.list_file} line {number}: {line.strip()!r}")
            species[fields[0]] = SPECIES[int(fields[2])]
        return species

    def negative_breed(self, stem: str) -> str | None:
        """A breed other than the image's own, the same one every time for this image."""
        others = [b for b in self.breeds if b != breed_from_stem(stem)]
        if not others:
            return None
        return others[zlib.crc32(stem.encode()) % len(others)]

    def index(self, tasks=None):
        tasks = self.wanted(tasks)
        refs = []
        for stem in sorted(self.species):
            breed = breed_from_stem(stem)
            if "segmentation" in tasks:
                refs.append(ExampleRef(self.kind, stem, "segmentation", breed, stem))
            if "classification" in tasks:
                refs.append(ExampleRef(self.kind, stem, "classification", breed, stem, present=True))
                negative = self.negative_breed(stem)
                if negative is not None:
                    refs.append(ExampleRef(self.kind, stem, "classification", negative, stem, present=False))
        return refs

    def trimap(self, stem: str) -> np.ndarray:
        path = self.root / "annotations" / "trimaps" / f"{stem}.png"
        trimap = read_label_png(path, what="trimap")
        if not np.isin(trimap, (1, 2, 3)).all():
            raise IcvError(f"corrupt trimap file: {path} (values other than 1, 2, 3)")
        return trimap

    def load(self, ref: ExampleRef) -> Example:
        image = read_rgb(self.root / "images" / f"{ref.key}.jpg")
        example = Example(image=image, task=ref.task, category=ref.category, source=self.kind, image_id=ref.image_id)
        if ref.task == "segmentation":
            trimap = self.trimap(ref.key)
            if trimap.shape != image.shape[:2]:
                raise IcvError(f"trimap of {ref.key} is {trimap.shape[::-1]}, its image {image.shape[1::-1]}")
            example.mask = trimap == 1
        else:
            example.present = bool(ref.present)
        return example
