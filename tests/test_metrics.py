"""icv_deploy.metrics against independent references: brute-force counts, plain formulas, a direct pycocotools call."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest

from icv_deploy import metrics


# ---------------------------------------------------------------------------------------------- segmentation
def test_miou_matches_brute_force_pixel_count():
    rng = np.random.default_rng(0)
    cats = ["cat", "dog", "tree"]
    preds, gts, names = [], [], []
    for i in range(12):
        h, w = rng.integers(5, 20, size=2)
        preds.append(rng.random((h, w)) < 0.4)
        gts.append(rng.random((h, w)) < 0.3)
        names.append(cats[i % 3])
    out = metrics.segmentation(preds, gts, names)

    # Brute force: loop over every pixel of every query, count per class.
    inter = {c: 0 for c in cats}
    union = {c: 0 for c in cats}
    per_query = []
    for p, g, c in zip(preds, gts, names):
        i_q = u_q = 0
        for y in range(p.shape[0]):
            for x in range(p.shape[1]):
                i_q += bool(p[y, x]) and bool(g[y, x])
                u_q += bool(p[y, x]) or bool(g[y, x])
        inter[c] += i_q
        union[c] += u_q
        per_query.append(i_q / u_q)
    expected = {c: inter[c] / union[c] for c in cats}
    assert out["per_class"] == pytest.approx(expected)
    assert out["miou"] == pytest.approx(sum(expected.values()) / 3)
    assert out["per_image_mean_iou"] == pytest.approx(sum(per_query) / len(per_query))
    # The dataset-level figure is not the per-image mean (that is the point of computing it correctly).
    assert out["miou"] != pytest.approx(out["per_image_mean_iou"], abs=1e-9)


def test_miou_empty_masks_documented_behaviour():
    empty = np.zeros((4, 4), bool)
    full = np.ones((4, 4), bool)
    # "sky" is absent everywhere and never predicted: no IoU, left out of the mean; its query counts 1.0 per image.
    out = metrics.segmentation([full, empty], [full, empty], ["cat", "sky"])
    assert out["per_class"] == {"cat": 1.0}
    assert out["miou"] == 1.0 and out["classes"] == 1
    assert out["per_image_mean_iou"] == 1.0
    # Predicting a class that is absent gives IoU 0 for it.
    out = metrics.segmentation([full], [empty], ["cat"])
    assert out["per_class"] == {"cat": 0.0} and out["miou"] == 0.0
    # Nothing at all: NaN.
    assert math.isnan(metrics.segmentation([empty], [empty], ["sky"])["miou"])
    assert math.isnan(metrics.segmentation([], [], [])["miou"])
    with pytest.raises(ValueError, match="shape"):
        metrics.segmentation([np.zeros((2, 2), bool)], [np.zeros((3, 3), bool)], ["cat"])


# ---------------------------------------------------------------------------------------------------- depth
def _plain_depth(p, g, max_depth):
    """The textbook formulas, pixel list by pixel list."""
    pairs = [(min(max(pv, 1e-3), max_depth), gv) for pv, gv in zip(p.ravel(), g.ravel()) if 0 < gv <= max_depth]
    n = len(pairs)
    rmse = math.sqrt(sum((a - b) ** 2 for a, b in pairs) / n)
    abs_rel = sum(abs(a - b) / b for a, b in pairs) / n
    log10 = sum(abs(math.log10(a) - math.log10(b)) for a, b in pairs) / n
    deltas = [sum(max(a / b, b / a) < 1.25**k for a, b in pairs) / n for k in (1, 2, 3)]
    return [rmse, abs_rel, log10, *deltas]


def test_depth_matches_plain_formulas_with_invalid_pixels():
    rng = np.random.default_rng(1)
    preds, gts, expected = [], [], []
    for _ in range(5):
        g = rng.uniform(0.5, 12.0, size=(9, 11))  # some pixels beyond max_depth: invalid
        g[rng.random(g.shape) < 0.2] = 0.0  # missing Kinect returns: invalid
        p = g * rng.uniform(0.7, 1.4, size=g.shape) + rng.normal(0, 0.3, size=g.shape)  # some negative: clipped
        p[0, 0] = -1.0
        preds.append(p)
        gts.append(g)
        expected.append(_plain_depth(p, g, 10.0))
    out = metrics.depth(preds, gts, max_depth=10.0)
    mean = np.mean(expected, axis=0)
    for key, value in zip(metrics.DEPTH_KEYS, mean):
        assert out[key] == pytest.approx(value, rel=1e-9), key
    assert out["images"] == 5 and out["images_skipped"] == 0
    # Odd-metre bug guard: pixels at even whole metres count too.
    g = np.full((2, 2), 2.0)
    assert metrics.depth([g * 1.1], [g])["abs_rel"] == pytest.approx(0.1)


def test_depth_zero_ground_truth_image_is_excluded():
    good_g = np.full((3, 3), 4.0)
    good_p = np.full((3, 3), 5.0)
    out = metrics.depth([good_p, np.ones((3, 3))], [good_g, np.zeros((3, 3))])
    assert out["images"] == 1 and out["images_skipped"] == 1
    assert out["rmse"] == pytest.approx(1.0)
    all_zero = metrics.depth([np.ones((3, 3))], [np.zeros((3, 3))])
    assert all_zero["images"] == 0 and all(math.isnan(all_zero[k]) for k in metrics.DEPTH_KEYS)
    # NaN predictions do not poison the mean: they become the lower clip bound.
    p = np.full((3, 3), np.nan)
    assert math.isfinite(metrics.depth([p], [good_g])["log10"])


# ------------------------------------------------------------------------------------------------ detection
def _direct_pycocotools(queries):
    """Reference mAP: a hand-built COCO ground truth and result list, evaluated directly."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cat_names = sorted({q["category"] for q in queries})
    images, anns, dets = [], [], []
    for n, q in enumerate(queries):
        img = 1000 + 7 * n  # different ids from the module's on purpose
        images.append({"id": img})
        for x0, y0, x1, y1 in q["gt_boxes"]:
            anns.append(dict(id=len(anns) + 1, image_id=img, category_id=10 + cat_names.index(q["category"]),
                             bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0), iscrowd=0))
        for (x0, y0, x1, y1), s in zip(q["boxes"], q["scores"]):
            dets.append(dict(image_id=img, category_id=10 + cat_names.index(q["category"]),
                             bbox=[x0, y0, x1 - x0, y1 - y0], score=s))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": 10 + i, "name": c} for i, c in enumerate(cat_names)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[1], ev.stats[0]


def _random_boxes(rng, n, size=100):
    xy = rng.uniform(0, size * 0.7, size=(n, 2))
    wh = rng.uniform(5, size * 0.3, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def test_detection_matches_direct_pycocotools():
    rng = np.random.default_rng(2)
    queries = []
    for i in range(20):
        gt = _random_boxes(rng, int(rng.integers(0, 4)))
        noisy = gt + rng.normal(0, 4, size=gt.shape)  # near-hits at various IoUs
        pred = np.concatenate([noisy, _random_boxes(rng, int(rng.integers(0, 3)))])  # plus false positives
        queries.append(dict(image_id=f"img{i // 2}", category=["cat", "dog", "car"][i % 3],
                            boxes=pred.tolist(), scores=rng.random(len(pred)).tolist(), gt_boxes=gt.tolist()))
    out = metrics.detection(queries)
    map50, map_ = _direct_pycocotools(queries)
    assert 0 < out["map50"] < 1
    assert out["map50"] == pytest.approx(map50) and out["map"] == pytest.approx(map_)


def test_detection_keeps_false_positives_unlike_the_original():
    gt = [[10, 10, 50, 50]]
    hit = dict(image_id="a", category="dog", boxes=[[10, 10, 50, 50]], scores=[0.5], gt_boxes=gt)
    # The same image asked twice in one set, one answer ranked above the hit: scored, not filtered away.
    spurious = dict(image_id="b", category="dog", boxes=[[60, 60, 90, 90]], scores=[0.9], gt_boxes=[[0, 0, 5, 5]])
    out = metrics.detection([hit, spurious])
    assert out["map50"] == pytest.approx(_direct_pycocotools([hit, spurious])[0])
    assert out["map50"] < 0.99
    assert metrics.detection([hit])["map50"] == pytest.approx(1.0)


def test_detection_edge_cases():
    no_pred = dict(image_id="a", category="dog", boxes=np.zeros((0, 4)), scores=np.zeros(0), gt_boxes=[[0, 0, 9, 9]])
    assert metrics.detection([no_pred])["map50"] == 0.0
    no_gt = dict(image_id="a", category="dog", boxes=[[0, 0, 9, 9]], scores=[0.8], gt_boxes=np.zeros((0, 4)))
    out = metrics.detection([no_gt])
    assert math.isnan(out["map50"]) and math.isnan(out["map"])
    assert math.isnan(metrics.detection([])["map"])
    # A query without gt boxes: its prediction is a false positive of that category (matches pycocotools).
    hit = dict(image_id="b", category="dog", boxes=[[0, 0, 9, 9]], scores=[0.5], gt_boxes=[[0, 0, 9, 9]])
    mixed = metrics.detection([hit, no_gt])
    assert mixed["map50"] == pytest.approx(_direct_pycocotools([hit, no_gt])[0]) and mixed["map50"] < 1.0
    # Missing scores mean confidence 1.
    assert metrics.detection([dict(hit, scores=None)])["map50"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------- classification
def test_classification_against_counts():
    rng = np.random.default_rng(3)
    pred = rng.random(50) < 0.5
    gt = rng.random(50) < 0.4
    out = metrics.classification(pred, gt)
    tp = sum(1 for p, g in zip(pred, gt) if p and g)
    assert out["accuracy"] == pytest.approx(sum(1 for p, g in zip(pred, gt) if p == g) / 50)
    assert out["precision"] == pytest.approx(tp / sum(pred))
    assert out["recall"] == pytest.approx(tp / sum(gt))
    assert "cls_score" not in out
    none = metrics.classification([False, False], [False, False], cls_scores=[])
    assert none["accuracy"] == 1.0 and math.isnan(none["precision"]) and math.isnan(none["recall"])


def test_cls_score_is_mean_euclidean_distance_to_the_colour_block():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    expected = np.mean([math.dist(img[y, x].tolist(), (0, 0, 255)) for y in range(6) for x in range(5)])
    assert metrics.cls_score(img, (0, 0, 255)) == pytest.approx(expected)
    assert metrics.cls_score(np.zeros((4, 4, 3), np.uint8), (0, 0, 0)) == 0.0
    assert metrics.classification([True], [True], cls_scores=[3.0, 5.0])["cls_score"] == 4.0


# -------------------------------------------------------------------------------------------------- Table 1
def test_table1_layout():
    results = {
        "model A": {"depth": {"nyuv2": {"rmse": 0.2751}}, "segmentation": {"voc": {"miou": 0.5}, "ade20k": {"miou": 0.523}},
                    "detection": {"coco": {"map50": float("nan")}}},
        "model B": {"classification": {"pets": {"accuracy": 0.804}}},
    }
    text = metrics.table1(results)
    lines = text.strip().splitlines()
    assert len(lines) == 5
    header, datasets = lines[0], lines[1]
    assert header.index("Depth Estimation") < header.index("Semantic Segmentation") < header.index("Classification") < header.index("Object Detection")
    assert datasets.index("ADE20K") < datasets.index("VOC")  # the paper's order, not the dict's
    assert "| model A | 0.275 | 52.3 | 50.0 | - | n/a |" == lines[3]
    assert lines[4] == "| model B | - | - | - | 80.4 | - |"
    assert "Oxford-Pets" in datasets and "COCO" in datasets
