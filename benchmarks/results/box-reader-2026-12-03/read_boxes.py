"""Scratch (box-reader-2026-12-03): mAP@0.5 / mAP@[.5:.95] (icv_deploy.metrics, pycocotools) of the runtime's box
reader on saved painted answers (paint_detection.py), recall and precision at IoU 0.5, and how well the missed
ground-truth boxes' outline bands are painted.

    python benchmarks/results/box-reader-2026-12-03/read_boxes.py ANSWERS.npz...
"""
import sys

import numpy as np

from icv_deploy import metrics
from icv_deploy.tasks import decoders


def iou(box, boxes):
    x0, y0 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x1, y1 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    return inter / ((box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter)


for path in sys.argv[1:]:
    saved = np.load(path, allow_pickle=True)
    fraction = float(saved["line_fraction"]) if "line_fraction" in saved else 3 / 128
    width = decoders.box_line_width(*saved["visuals"].shape[1:3], fraction)
    queries, matched, predicted, missed_coverage = [], 0, 0, []
    for visual, gt, image_id, category in zip(saved["visuals"], saved["gts"], saved["ids"], saved["cats"]):
        boxes, scores = decoders.decode_detection(visual, line_fraction=fraction)
        queries.append({"image_id": str(image_id), "category": str(category), "boxes": boxes.tolist(),
                        "scores": scores.tolist(), "gt_boxes": gt.tolist()})
        _, _, bands = decoders.outline_bands(visual, width)  # the bands the reader measures on
        used = set()
        for box in boxes:  # greedy in score order, as COCO matches
            overlaps = iou(box, gt) if len(gt) else np.zeros(0)
            best = int(np.argmax(overlaps)) if len(overlaps) else -1
            if best >= 0 and overlaps[best] >= 0.5 and best not in used:
                used.add(best)
        matched, predicted = matched + len(used), predicted + len(boxes)
        for k, box in enumerate(gt):
            if k not in used:
                missed_coverage.append(float(bands.measure(np.asarray([box]).astype(np.int64))[1][0]))
    m = metrics.detection(queries)
    coverage = np.array(missed_coverage)
    print(f"{path}: mAP@0.5 {m['map50']:.4f}, mAP@[.5:.95] {m['map']:.4f}; {m['gt_boxes']} boxes, {predicted} read, "
          f"recall {matched / m['gt_boxes']:.3f}, precision {matched / max(predicted, 1):.3f}; missed boxes whose "
          f"outline band is painted >= 0.75 / 0.6-0.75 / < 0.6: {(coverage >= 0.75).sum()} / "
          f"{((coverage >= 0.6) & (coverage < 0.75)).sum()} / {(coverage < 0.6).sum()}")
