"""What a pipeline call returns: the painted answer, its decoded form, and files a person can look at."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import atomic


@dataclass
class Result:
    instruction: str
    task: str
    category: str | None
    image: np.ndarray  # the input, HxWx3 uint8 (EXIF-rotated)
    visual: np.ndarray  # the decoded model output v(y), at the size the model worked at
    settings: dict = field(default_factory=dict)  # steps, sampler, seed, guidance, resolution, engine
    mask: np.ndarray | None = None  # bool, input size
    soft_mask: np.ndarray | None = None  # float32 in [0, 1], input size
    boxes: np.ndarray | None = None  # N x 4 float32 (x0, y0, x1, y1) in input pixels
    scores: np.ndarray | None = None  # N float32
    depth: np.ndarray | None = None  # float32 metres, input size
    present: bool | None = None
    score: float | None = None
    colors: tuple[str, str] | None = None  # classification: (colour if present, colour if absent)
    decided_by: str = "text"  # how the task was decided: "text", "forced" (task=) or "painted" (read from visual)
    random_weights: bool = False  # the model was built from configs with random weights: the answer means nothing
    files: dict = field(default_factory=dict)  # name -> path, filled by save()

    def to_json(self) -> dict:
        """A JSON-ready summary: small answers inline, large arrays as summaries (and paths once saved)."""
        h, w = self.image.shape[:2]
        out = {
            "instruction": self.instruction, "task": self.task, "decided_by": self.decided_by, "category": self.category,
            "image_size": [w, h], "model_size": [self.visual.shape[1], self.visual.shape[0]], **self.settings,
            "random_weights": bool(self.random_weights),
        }
        if self.task == "segmentation":
            out["mask_fraction"] = round(float(self.mask.mean()), 6)
        elif self.task == "detection":
            out["boxes"] = [[round(float(v), 2) for v in box] for box in self.boxes]
            out["scores"] = [round(float(s), 4) for s in self.scores]
        elif self.task == "depth":
            d = self.depth
            out["depth_m"] = {"min": round(float(d.min()), 4), "mean": round(float(d.mean()), 4), "max": round(float(d.max()), 4)}
        elif self.task == "classification":
            out.update(present=bool(self.present), score=round(float(self.score), 4), colors=list(self.colors or ()))
        if self.files:
            out["files"] = {k: str(v) for k, v in self.files.items()}
        return out

    def overlay(self) -> np.ndarray:
        """The picture for this task: mask overlay, drawn boxes ("no boxes found" when none), colour-mapped depth with
        a colour bar in metres, or a yes/no card."""
        from .tasks import visualize

        if self.task == "segmentation":
            return visualize.overlay_mask(self.image, self.mask)
        if self.task == "detection":
            return visualize.draw_boxes(self.image, self.boxes, self.scores, label=self.category)
        if self.task == "depth":
            return visualize.depth_picture(self.depth)
        return visualize.classification_card(self.image, self.present, self.score, self.category)

    def save(self, folder: str | Path) -> dict:
        """Write visual.png, overlay.png, the raw answer and result.json into `folder`; return the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = {"visual": folder / "visual.png", "overlay": folder / "overlay.png"}
        _write_png(files["visual"], self.visual)
        _write_png(files["overlay"], self.overlay())
        if self.task == "segmentation":
            files["mask"] = folder / "mask.png"
            _write_png(files["mask"], (self.mask * 255).astype(np.uint8))
        elif self.task == "detection":
            files["boxes"] = folder / "boxes.json"
            atomic.write_json(files["boxes"], [{"box": [float(v) for v in b], "score": float(s), "category": self.category}
                                               for b, s in zip(self.boxes, self.scores)])
        elif self.task == "depth":
            files["depth_npy"], files["depth_png"] = folder / "depth.npy", folder / "depth.png"
            with atomic.atomic_path(files["depth_npy"]) as tmp, open(tmp, "wb") as fh:
                np.save(fh, self.depth.astype(np.float32))  # a handle: np.save would append ".npy" to a path
            # 16-bit PNG in millimetres, the NYUv2 / KITTI convention
            _write_png(files["depth_png"], np.clip(np.round(self.depth * 1000.0), 0, 65535).astype(np.uint16))
        files["result"] = folder / "result.json"
        self.files = {k: v for k, v in files.items()}
        atomic.write_json(files["result"], self.to_json())
        return self.files


def png_bytes(array: np.ndarray) -> bytes:
    """An RGB (HxWx3) or grey (HxW, 8 or 16 bit) array as PNG file bytes."""
    import cv2

    if array.ndim == 3:
        array = array[..., ::-1]  # RGB -> BGR for OpenCV
    ok, data = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise OSError(f"could not encode a {array.shape} {array.dtype} array as PNG")
    return data.tobytes()


def _write_png(path: Path, array: np.ndarray) -> None:
    atomic.write_bytes(path, png_bytes(array))
