"""NYU Depth v2: monocular depth, one example per image. Two on-disk formats (ROOT picks one):

1. The official labeled file `nyu_depth_v2_labeled.mat` (ROOT is the file). MATLAB v7.3 = HDF5, read with
   h5py. MATLAB stores arrays column-major, so h5py sees them transposed: `images` is (N, 3, W, H) uint8 and
   `depths` is (N, W, H) float32 metres; image i is `images[i].transpose(2, 1, 0)` (H, W, 3), its depth
   `depths[i].T`. Splits: the official `splits.mat` (MATLAB v5, `trainNdxs` / `testNdxs`, 1-based) beside
   the .mat file gives `train` (795 images) and `test` (654); without it the only split is `all`
   (the default then; naming train or test is an error that names the missing file).
2. The common folder format (ROOT is a folder; `--split NAME` looks in ROOT/NAME when that exists): RGB
   images with 16-bit PNG depth in millimetres (0 = no measurement), paired either as
   `.../rgb/NAME.{jpg,png}` + `.../depth/NAME.png`, or as `.../rgb_NAME.jpg` + `.../sync_depth_NAME.png`
   in one folder (the BTS layout). Folders are searched recursively.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from icv_deploy.errors import IcvError

from .base import Adapter, Example, ExampleRef, read_label_png, read_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class Nyuv2Adapter(Adapter):
    kind = "nyuv2"
    tasks = ("depth",)
    default_split = None  # train if splits.mat is there (the .mat format), else all

    def __init__(self, root, split=None):
        super().__init__(root, split)
        self.split = {"val": "test"}.get(self.split, self.split)
        self.is_mat = self.root.is_file()
        self._h5 = None
        if self.is_mat:
            self.indices = self._mat_indices()
        else:
            if self.split and (self.root / self.split).is_dir():
                self.root = self.root / self.split
            self.pairs = self._folder_pairs()

    # --- the labeled .mat file -------------------------------------------------------------------------
    @property
    def h5(self):
        if self._h5 is None:
            import h5py

            try:
                self._h5 = h5py.File(self.root, "r")
            except OSError as exc:
                raise IcvError(f"corrupt NYUv2 file: {self.root} is not a MATLAB v7.3 (HDF5) .mat file ({exc})") from None
            for name in ("images", "depths"):
                if name not in self._h5:
                    raise IcvError(f"corrupt NYUv2 file: {self.root} has no {name!r} dataset")
            n_images, n_depths = self._h5["images"].shape[0], self._h5["depths"].shape[0]
            if n_images != n_depths or self._h5["images"].ndim != 4 or self._h5["images"].shape[1] != 3:
                raise IcvError(f"corrupt NYUv2 file: {self.root}: images {self._h5['images'].shape}, depths {self._h5['depths'].shape}")
        return self._h5

    def _mat_indices(self) -> list[int]:
        splits_file = self.root.with_name("splits.mat")
        split = self.split or ("train" if splits_file.is_file() else "all")
        self.split = split
        if split == "all":
            return list(range(self.h5["images"].shape[0]))
        if split not in ("train", "test"):
            raise IcvError(f"nyuv2 split must be train, test or all, not {split!r}")
        if not splits_file.is_file():
            raise IcvError(f"missing NYUv2 split file: {splits_file} (needed for split {split!r}; use --split all)")
        try:
            import scipy.io
        except ImportError:
            raise IcvError(f"reading {splits_file} (MATLAB v5) needs scipy: pip install scipy") from None
        try:
            indices = scipy.io.loadmat(splits_file)[f"{split}Ndxs"]
        except Exception as exc:  # scipy raises many types for a broken file
            raise IcvError(f"corrupt NYUv2 split file: {splits_file} ({exc})") from None
        return sorted(int(i) - 1 for i in np.asarray(indices).ravel())  # MATLAB indices start at 1

    # --- the folder format ---------------------------------------------------------------------------
    def _folder_pairs(self) -> dict[str, tuple[Path, Path]]:
        pairs = {}
        for path in sorted(self.root.rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            if path.parent.name == "rgb":
                depth = path.parent.parent / "depth" / f"{path.stem}.png"
            elif path.name.startswith("rgb_"):
                depth = path.with_name(f"sync_depth_{path.stem[4:]}.png")
            else:
                continue
            image_id = str(path.relative_to(self.root).with_suffix("")).replace("\\", "/")
            pairs[image_id] = (path, depth)
        if not pairs:
            raise IcvError(f"no NYUv2 images under {self.root} (expected rgb/NAME.jpg + depth/NAME.png or rgb_NAME.jpg + sync_depth_NAME.png)")
        return pairs

    # --- the adapter interface -----------------------------------------------------------------------
    def index(self, tasks=None):
        if not self.wanted(tasks):
            return []
        keys = [str(i) for i in self.indices] if self.is_mat else list(self.pairs)
        ids = [f"{i:04d}" for i in self.indices] if self.is_mat else keys
        return [ExampleRef(self.kind, image_id, "depth", None, key) for image_id, key in zip(ids, keys)]

    def load(self, ref: ExampleRef) -> Example:
        if self.is_mat:
            i = int(ref.key)
            image = np.ascontiguousarray(self.h5["images"][i].transpose(2, 1, 0)).astype(np.uint8)
            depth = np.ascontiguousarray(self.h5["depths"][i].T).astype(np.float32)
        else:
            image_path, depth_path = self.pairs[ref.key]
            image = read_rgb(image_path)
            depth_mm = read_label_png(depth_path, what="depth")
            if depth_mm.dtype != np.uint16:
                raise IcvError(f"depth file {depth_path} is {depth_mm.dtype}, expected a 16-bit PNG in millimetres")
            depth = depth_mm.astype(np.float32) / 1000.0
        if depth.shape != image.shape[:2]:
            raise IcvError(f"NYUv2 {ref.image_id}: depth {depth.shape} and image {image.shape[:2]} differ in size")
        depth[~np.isfinite(depth)] = 0.0
        return Example(image=image, task="depth", category=None, source=self.kind, image_id=ref.image_id, depth=depth)
