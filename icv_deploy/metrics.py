"""Task metrics, computed the correct way (docs/DESIGN.md 9), and the paper's Table 1 as Markdown.

Pure numpy, plus pycocotools for detection. Every function takes plain arrays, so any caller (icv-eval, a
notebook, another project) can score predictions without the runtime.

Choices the original InstructCV evaluation got wrong, and what these functions do instead:
- segmentation: the original averaged per-image IoUs. Here intersections and unions are summed over the whole
  dataset per class, then averaged over classes (the standard mIoU). The per-image mean is still reported as
  `per_image_mean_iou`, labelled as the original code's figure.
- depth: the original selected pixels with a bitwise test that kept only odd whole metres. Here every pixel
  with valid ground truth counts (0 < gt <= max_depth).
- detection: the original kept only predicted boxes that overlapped a ground-truth box before scoring. Here
  every predicted box is scored, with the runtime's own confidence, through pycocotools.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

NAN = float("nan")


# --------------------------------------------------------------------------------------------- segmentation
def segmentation(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], categories: Sequence[str]) -> dict:
    """mIoU over binary masks, one (pred, gt, category) per query ("Segment the <category>").

    Per class c: IoU_c = sum of |pred & gt| / sum of |pred | gt| over all queries of class c. `miou` is the
    mean of IoU_c over the classes that occur, i.e. whose summed union is non-zero (the class is in the ground
    truth or in a prediction somewhere). A class that is absent everywhere and never predicted has no defined
    IoU; it is left out of the mean (and of `per_class`) rather than counted as 0 or 1. With no such class at
    all, `miou` is NaN.

    `per_image_mean_iou` is the figure the original InstructCV code reported: the IoU of each query on its
    own, averaged over queries; a query with both masks empty counts as 1.0 (the original's epsilon did that).
    """
    if not (len(preds) == len(gts) == len(categories)):
        raise ValueError(f"segmentation: {len(preds)} predictions, {len(gts)} ground truths, {len(categories)} categories")
    return segmentation_from_counts([segmentation_counts(p, g) for p, g in zip(preds, gts)], categories)


def segmentation_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """(|pred & gt|, |pred | gt|) of one query: all that mIoU needs, small enough to store per query."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"segmentation: prediction shape {pred.shape} differs from ground truth {gt.shape}")
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))


def segmentation_from_counts(counts: Sequence[tuple[int, int]], categories: Sequence[str]) -> dict:
    """`segmentation` from per-query (intersection, union) pixel counts (see `segmentation_counts`)."""
    inter: dict[str, int] = {}
    union: dict[str, int] = {}
    per_query = []
    for (i, u), cat in zip(counts, categories, strict=True):
        inter[cat] = inter.get(cat, 0) + int(i)
        union[cat] = union.get(cat, 0) + int(u)
        per_query.append(i / u if u else 1.0)
    per_class = {cat: inter[cat] / union[cat] for cat in sorted(union) if union[cat] > 0}
    return {
        "miou": float(np.mean(list(per_class.values()))) if per_class else NAN,
        "per_class": per_class,
        "per_image_mean_iou": float(np.mean(per_query)) if per_query else NAN,
        "queries": len(per_query),
        "classes": len(per_class),
    }


# ---------------------------------------------------------------------------------------------------- depth
DEPTH_KEYS = ("rmse", "abs_rel", "log10", "delta1", "delta2", "delta3")


def depth_one(pred: np.ndarray, gt: np.ndarray, max_depth: float = 10.0) -> dict | None:
    """Metrics of one depth map over its valid pixels (finite gt, 0 < gt <= max_depth); None if there are none.

    Predictions are clipped to [1e-3, max_depth] (a non-finite prediction becomes the nearest bound, NaN the
    lower one) so that log10 and the ratios stay finite.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"depth: prediction shape {pred.shape} differs from ground truth {gt.shape}")
    valid = np.isfinite(gt) & (gt > 0) & (gt <= max_depth)
    if not valid.any():
        return None
    g = gt[valid]
    p = np.clip(np.nan_to_num(pred[valid], nan=1e-3, posinf=max_depth, neginf=1e-3), 1e-3, max_depth)
    ratio = np.maximum(p / g, g / p)
    return {
        "rmse": float(np.sqrt(np.mean((p - g) ** 2))),
        "abs_rel": float(np.mean(np.abs(p - g) / g)),
        "log10": float(np.mean(np.abs(np.log10(p) - np.log10(g)))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
    }


def depth(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], max_depth: float = 10.0) -> dict:
    """Depth metrics per image (see `depth_one`), then averaged over images (the NYUv2 convention).

    An image without a single valid ground-truth pixel (all zero: no Kinect return) has no defined error: it
    is excluded and counted in `images_skipped`. If every image is excluded, all metrics are NaN.
    """
    if len(preds) != len(gts):
        raise ValueError(f"depth: {len(preds)} predictions for {len(gts)} ground truths")
    return depth_from_images([depth_one(p, g, max_depth) for p, g in zip(preds, gts)], max_depth)


def depth_from_images(per_image: Sequence[Mapping | None], max_depth: float = 10.0) -> dict:
    """`depth` from per-image results of `depth_one` (None for an image without valid pixels)."""
    scored = [m for m in per_image if m is not None]
    out = {k: (float(np.mean([m[k] for m in scored])) if scored else NAN) for k in DEPTH_KEYS}
    out.update(images=len(scored), images_skipped=len(per_image) - len(scored), max_depth=float(max_depth))
    return out


# ------------------------------------------------------------------------------------------------ detection
def coco_dicts(queries: Sequence[Mapping]) -> tuple[dict, list[dict], dict[str, int]]:
    """COCO ground truth and result lists for `queries`, in memory.

    Each query ("Detect the <category>" on one image) becomes its own COCO image, id = position in `queries`
    + 1, so the ground truth of a query is exactly its `gt_boxes`, even when two queries share an image or a
    dataset lists different boxes per instruction. Categories keep their identity (ids 1..K in sorted name
    order), so AP is computed per category over all its queries and then averaged over categories, exactly
    as COCO does. Boxes arrive as (x0, y0, x1, y1) and are stored as COCO (x, y, w, h).
    """
    names = sorted({str(q["category"]) for q in queries})
    cat_ids = {name: i + 1 for i, name in enumerate(names)}
    images, gt_anns, results = [], [], []
    for index, q in enumerate(queries):
        image_id = index + 1
        cat = cat_ids[str(q["category"])]
        images.append({"id": image_id, "file_name": str(q.get("image_id", image_id))})
        for box in _xyxy(q.get("gt_boxes")):
            w, h = box[2] - box[0], box[3] - box[1]
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": image_id, "category_id": cat,
                            "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
        boxes = _xyxy(q.get("boxes"))
        scores = np.asarray(q.get("scores") if q.get("scores") is not None else np.ones(len(boxes)), dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"detection: query {index} has {len(boxes)} boxes but {len(scores)} scores")
        for box, score in zip(boxes, scores):
            results.append({"image_id": image_id, "category_id": cat, "score": float(score),
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    gt = {"images": images, "annotations": gt_anns, "categories": [{"id": i, "name": n} for n, i in cat_ids.items()]}
    return gt, results, cat_ids


def detection(queries: Sequence[Mapping]) -> dict:
    """COCO box AP through pycocotools: `map50` (AP@0.5) and `map` (AP@[.5:.95]), with the runtime's scores.

    Every predicted box counts; nothing is filtered by ground truth. Edge cases, as COCO defines them:
    - a query without ground-truth boxes: its predictions are false positives of its category;
    - a category with no ground-truth box anywhere: AP undefined, left out of the mean over categories;
    - no ground-truth box at all: `map50` and `map` are NaN;
    - no prediction at all (with some ground truth): both are 0.0;
    - COCO's default maxDets: the 100 best-scored boxes of each query count.
    See `coco_dicts` for how queries map to COCO images and categories.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, results, _ = coco_dicts(queries)
    out = {"queries": len(queries), "gt_boxes": len(gt["annotations"]), "pred_boxes": len(results)}
    if not gt["annotations"]:
        return {"map50": NAN, "map": NAN, **out}
    if not results:
        return {"map50": 0.0, "map": 0.0, **out}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ap, ap50 = (float(s) if s >= 0 else NAN for s in ev.stats[:2])
    return {"map50": ap50, "map": ap, **out}


def _xyxy(boxes) -> list[list[float]]:
    if boxes is None:
        return []
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4).tolist()


# ------------------------------------------------------------------------------------------- classification
def cls_score(visual: np.ndarray, target_color: Sequence[int]) -> float:
    """The paper's Cls-Score (section 4.1): the mean over pixels of the Euclidean distance between the output
    image v(y) and the colour block the instruction asks for (0-255 RGB units; lower is better, 0 is perfect).
    """
    v = np.asarray(visual, dtype=np.float64).reshape(-1, 3)
    return float(np.mean(np.linalg.norm(v - np.asarray(target_color, dtype=np.float64), axis=1)))


def classification(pred_present: Sequence[bool], gt_present: Sequence[bool], cls_scores: Sequence[float] | None = None) -> dict:
    """Binary "is the category in the picture" scores: `accuracy`, `precision`, `recall` (present = positive).

    precision is NaN when nothing was predicted present, recall when nothing is present. If `cls_scores`
    (see `cls_score`, one per query, measured against the colour of the correct answer) are given, their mean
    is reported as `cls_score`.
    """
    pred = np.asarray(pred_present, dtype=bool).reshape(-1)
    gt = np.asarray(gt_present, dtype=bool).reshape(-1)
    if pred.shape != gt.shape:
        raise ValueError(f"classification: {pred.size} predictions for {gt.size} ground truths")
    tp = int(np.count_nonzero(pred & gt))
    out = {
        "accuracy": float(np.mean(pred == gt)) if gt.size else NAN,
        "precision": tp / int(pred.sum()) if pred.any() else NAN,
        "recall": tp / int(gt.sum()) if gt.any() else NAN,
        "queries": int(gt.size),
        "positives": int(gt.sum()),
    }
    if cls_scores is not None:
        out["cls_score"] = float(np.mean(cls_scores)) if len(cls_scores) else NAN
    return out


# -------------------------------------------------------------------------------------------------- Table 1
# The paper's Table 1: one metric per task, task groups in this order, datasets named as the paper does
# (keys are the dataset adapters' kinds).
# mIoU, Acc and mAP@0.5 are shown in percent, RMSE in metres (as the paper prints them).
TABLE1_COLUMNS = (
    ("depth", "rmse", "Depth Estimation RMSE↓", 1.0, 3),
    ("segmentation", "miou", "Semantic Segmentation mIoU↑", 100.0, 1),
    ("classification", "accuracy", "Classification Acc↑", 100.0, 1),
    ("detection", "map50", "Object Detection mAP@0.5↑", 100.0, 1),
)
PAPER_DATASETS = {
    "depth": ("nyuv2", "sunrgbd"),
    "segmentation": ("ade20k", "voc"),
    "classification": ("pets", "imagenet"),
    "detection": ("coco", "voc"),
}
DATASET_NAMES = {"nyuv2": "NYUv2", "sunrgbd": "SUNRGB-D", "ade20k": "ADE20K", "voc": "VOC", "pets": "Oxford-Pets",
                 "imagenet": "ImageNet-sub", "coco": "COCO", "synth": "synthetic"}


def table1(results: Mapping[str, Mapping[str, Mapping[str, Mapping]]]) -> str:
    """Markdown in the layout of the paper's Table 1.

    `results` maps a row label (a model, or a model + sampler) to `{task: {dataset: metrics}}`, the
    `results` entry of icv-eval's metrics.json. Columns: per task group (depth, segmentation,
    classification, detection), one column per dataset that any row has, the paper's datasets first.
    Missing cells print "-", undefined metrics (NaN) print "n/a".
    """
    columns = []
    for task, key, title, scale, digits in TABLE1_COLUMNS:
        seen = {ds for row in results.values() for ds in row.get(task, {})}
        order = [d for d in PAPER_DATASETS[task] if d in seen] + sorted(seen - set(PAPER_DATASETS[task]))
        columns += [(task, key, title, scale, digits, ds) for ds in order]
    if not columns:
        return "(no results)\n"
    header1 = ["Model"] + [c[2] for c in columns]
    header2 = [""] + [DATASET_NAMES.get(c[5], c[5]) for c in columns]
    lines = [_md_row(header1), _md_row(header2), _md_row(["---"] + ["---:"] * len(columns))]
    for label, row in results.items():
        cells = [label]
        for task, key, _, scale, digits, ds in columns:
            metrics = row.get(task, {}).get(ds)
            cells.append("-" if metrics is None else _fmt(metrics.get(key), scale, digits))
        lines.append(_md_row(cells))
    return "\n".join(lines) + "\n"


def details_table(results: Mapping[str, Mapping[str, Mapping]]) -> str:
    """All scalar metrics of one run, one line per (task, dataset): what Table 1 leaves out."""
    lines = [_md_row(["Task", "Dataset", "Metrics"]), _md_row(["---", "---", "---"])]
    for task, per_dataset in results.items():
        for ds, metrics in per_dataset.items():
            scalars = ", ".join(f"{k} {_fmt(v, 1.0, 4)}" for k, v in metrics.items() if isinstance(v, (int, float)))
            lines.append(_md_row([task, DATASET_NAMES.get(ds, ds), scalars]))
    return "\n".join(lines) + "\n"


def _fmt(value, scale: float, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    return "n/a" if math.isnan(value) else f"{value * scale:.{digits}f}"


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
