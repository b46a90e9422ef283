"""Dataset adapters on small fixtures written in each dataset's real on-disk format.

References are independent of the adapters: polygons rasterised by point-in-polygon at pixel centres
(matplotlib), masks and depths written by the test itself, boxes read back from the painted target.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from matplotlib.path import Path as PolyPath
from PIL import Image

from icv_deploy.errors import IcvError
from icv_deploy.tasks.encodings import COLORS, encode_depth
from icv_deploy.training.datasets import open_source
from icv_deploy.training.pairs import make_pair


def iou(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return (a & b).sum() / max(1, (a | b).sum())


def polygon_mask(poly, h, w):
    ys, xs = np.mgrid[0:h, 0:w]
    centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1)
    return PolyPath(np.asarray(poly, float).reshape(-1, 2)).contains_points(centres).reshape(h, w)


def blue_box(target):
    """Outer bounding rectangle (x0, y0, x1, y1 exclusive) of the pure-blue outline pixels."""
    ys, xs = np.nonzero(np.all(target == COLORS["blue"], axis=-1))
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def textured(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(30, 220, size=(h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------------------
# COCO

H, W = 48, 64
CAT_POLY = [10, 10, 40, 10, 40, 30, 10, 30]
DOG_POLY = [5.5, 40, 30.2, 8.3, 55.7, 44.1]


def rle_uncompressed(mask):
    """COCO's uncompressed RLE: run lengths over the column-major flattened mask, starting with zeros."""
    flat = np.asarray(mask, np.uint8).ravel(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": [mask.shape[0], mask.shape[1]], "counts": counts}


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    from pycocotools import mask as mask_utils

    root = tmp_path_factory.mktemp("coco")
    (root / "val2017").mkdir()
    (root / "annotations").mkdir()
    for i in (1, 2):
        Image.fromarray(textured(H, W, i)).save(root / "val2017" / f"{i:012d}.jpg", quality=95)
    dog2 = np.zeros((H, W), bool)
    dog2[30:44, 44:60] = True
    compressed = mask_utils.encode(np.asfortranarray(dog2.astype(np.uint8)))
    compressed["counts"] = compressed["counts"].decode()
    crowd = np.zeros((H, W), bool)
    crowd[2:12, 45:62] = True
    anns = [
        {"id": 1, "image_id": 1, "category_id": 17, "segmentation": [CAT_POLY], "bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 18, "segmentation": [DOG_POLY], "bbox": [5.5, 8.3, 50.2, 35.8], "area": 800, "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 18, "segmentation": compressed, "bbox": [44, 30, 16, 14], "area": 224, "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 1, "segmentation": rle_uncompressed(crowd), "bbox": [45, 2, 17, 10], "area": 170, "iscrowd": 1},
    ]
    data = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": H, "width": W} for i in (1, 2)],
        "annotations": anns,
        "categories": [{"id": 1, "name": "person"}, {"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}],
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return root, {"dog2": dog2, "crowd": crowd}


def test_coco_index_and_crowd_policy(coco_root):
    root, _ = coco_root
    refs = open_source("coco", root, split="val").index()
    got = {(r.image_id, r.task, r.category) for r in refs}
    assert got == {("1", "segmentation", "cat"), ("1", "detection", "cat"), ("1", "segmentation", "dog"),
                   ("1", "detection", "dog"), ("2", "segmentation", "person")}  # crowd only: no detection


def test_coco_masks_match_polygons_and_rle(coco_root):
    root, masks = coco_root
    adapter = open_source("coco", root, split="val2017")
    by_key = {(e.image_id, e.task, e.category): e for e in adapter.examples(["segmentation"])}
    cat = by_key[("1", "segmentation", "cat")]
    assert cat.image.shape == (H, W, 3) and cat.mask.dtype == bool
    assert iou(cat.mask, polygon_mask(CAT_POLY, H, W)) >= 0.99
    dog = by_key[("1", "segmentation", "dog")]
    assert iou(dog.mask, polygon_mask(DOG_POLY, H, W) | masks["dog2"]) >= 0.99
    person = by_key[("2", "segmentation", "person")]
    assert iou(person.mask, masks["crowd"]) == 1.0
    # the painted target at native size is the mask, pixel for pixel
    _, target = make_pair(cat, size=0)
    assert iou(target.mean(-1) > 127, polygon_mask(CAT_POLY, H, W)) >= 0.99


def test_coco_boxes_where_the_annotations_put_them(coco_root):
    root, _ = coco_root
    adapter = open_source("coco", root, split="val2017")
    dets = {e.category: e for e in adapter.examples(["detection"])}
    np.testing.assert_allclose(dets["cat"].boxes, [[10, 10, 40, 30]])
    np.testing.assert_allclose(sorted(dets["dog"].boxes.tolist()), [[5.5, 8.3, 55.7, 44.1], [44, 30, 60, 44]], atol=1e-4)
    image, target = make_pair(dets["cat"], size=0)
    assert blue_box(target) == (10, 10, 40, 30)
    assert np.array_equal(target[20, 20], image[20, 20])  # inside the box the picture is untouched
    # resized: short side 48 -> 24 (scale 1/2), width 64 -> 32, no crop on that axis
    _, small = make_pair(dets["cat"], size=24)
    assert small.shape == (24, 24, 3)
    assert blue_box(small) == (5 - 4, 5, 20 - 4, 15)  # x shifted by the centre crop (32 - 24) / 2


def test_coco_missing_and_corrupt_annotation_file(tmp_path, coco_root):
    with pytest.raises(IcvError, match="instances_train2017.json"):
        open_source("coco", tmp_path).index()
    (tmp_path / "annotations").mkdir()
    bad = tmp_path / "annotations" / "instances_val2017.json"
    bad.write_text('{"images": [')
    with pytest.raises(IcvError, match="corrupt annotation file: .*instances_val2017.json"):
        open_source("coco", tmp_path, split="val2017").index()


# --------------------------------------------------------------------------------------------------------
# ADE20K


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade") / "ADEChallengeData2016"
    for sub in ("images/training", "annotations/training", "images/validation", "annotations/validation"):
        (root / sub).mkdir(parents=True)
    labels = np.zeros((96, 128), np.uint8)
    labels[:40] = 3          # sky
    labels[40:, :64] = 13    # person
    labels[60:80, 80:120] = 150  # flag
    cv2.imwrite(str(root / "annotations/training/ADE_train_00000001.png"), labels)
    Image.fromarray(textured(96, 128)).save(root / "images/training/ADE_train_00000001.jpg")
    return root.parent, labels


def test_ade20k_classes_and_masks(ade_root):
    parent, labels = ade_root
    adapter = open_source("ade20k", parent)  # the folder that contains ADEChallengeData2016 works too
    examples = {e.category: e for e in adapter.examples()}
    assert set(examples) == {"sky", "person", "flag"}
    for name, value in (("sky", 3), ("person", 13), ("flag", 150)):
        assert np.array_equal(examples[name].mask, labels == value)
    # resized to 48: a 2x reduction of 96x128 -> 48x64, then an 8-pixel crop each side
    _, target = make_pair(examples["person"], size=48)
    reference = cv2.resize((labels == 13).astype(np.uint8), (64, 48), interpolation=cv2.INTER_NEAREST_EXACT)[:, 8:56]
    assert iou(target[..., 0] > 127, reference) >= 0.99


def test_ade20k_missing_annotation_names_the_file(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for sub in ("images/training", "annotations/training"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(textured(16, 16)).save(root / "images/training/ADE_train_00000007.jpg")
    with pytest.raises(IcvError, match="ADE_train_00000007.png"):
        open_source("ade20k", root).index()


# --------------------------------------------------------------------------------------------------------
# NYUv2


def write_nyu_mat(path, images, depths):
    """The official layout: MATLAB column-major arrays as h5py sees them, images (N, 3, W, H), depths (N, W, H)."""
    import h5py

    with h5py.File(path, "w") as f:
        f["images"] = np.ascontiguousarray(images.transpose(0, 3, 2, 1))
        f["depths"] = np.ascontiguousarray(depths.transpose(0, 2, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def nyu_arrays():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 255, size=(3, 24, 32, 3), dtype=np.uint8)
    depths = rng.uniform(0.7, 9.9, size=(3, 24, 32)).astype(np.float32)
    return images, depths


def test_nyuv2_labeled_mat_and_splits(tmp_path, nyu_arrays):
    import scipy.io

    images, depths = nyu_arrays
    mat = tmp_path / "nyu_depth_v2_labeled.mat"
    write_nyu_mat(mat, images, depths)
    adapter = open_source("nyuv2", mat)
    assert adapter.split == "all" and len(adapter.index()) == 3
    for i, example in enumerate(adapter.examples()):
        assert np.array_equal(example.image, images[i])
        assert np.array_equal(example.depth, depths[i])
        _, target = make_pair(example, size=0)
        assert np.abs(target[..., 0].astype(int) - np.round(depths[i] / 10 * 255)).max() <= 1
    with pytest.raises(IcvError, match="splits.mat"):
        open_source("nyuv2", mat, split="train")
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1], [3]]), "testNdxs": np.array([[2]])})
    assert [e.image_id for e in open_source("nyuv2", mat).examples()] == ["0000", "0002"]  # default: train
    (test_example,) = open_source("nyuv2", mat, split="test").examples()
    assert np.array_equal(test_example.depth, depths[1])


def test_nyuv2_mat_without_depths_names_the_file(tmp_path):
    import h5py

    mat = tmp_path / "broken.mat"
    with h5py.File(mat, "w") as f:
        f["images"] = np.zeros((1, 3, 8, 8), np.uint8)
    with pytest.raises(IcvError, match="broken.mat has no 'depths'"):
        open_source("nyuv2", mat)


def test_nyuv2_folder_formats(tmp_path, nyu_arrays):
    images, depths = nyu_arrays
    depth_mm = np.round(depths * 1000).astype(np.uint16)
    (tmp_path / "a" / "train" / "rgb").mkdir(parents=True)
    (tmp_path / "a" / "train" / "depth").mkdir()
    (tmp_path / "b" / "kitchen_0001").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(images[i]).save(tmp_path / "a" / "train" / "rgb" / f"{i:05d}.png")
        cv2.imwrite(str(tmp_path / "a" / "train" / "depth" / f"{i:05d}.png"), depth_mm[i])
        Image.fromarray(images[i]).save(tmp_path / "b" / "kitchen_0001" / f"rgb_{i:05d}.png")
        cv2.imwrite(str(tmp_path / "b" / "kitchen_0001" / f"sync_depth_{i:05d}.png"), depth_mm[i])
    for root, split in ((tmp_path / "a", "train"), (tmp_path / "b", None)):
        examples = list(open_source("nyuv2", root, split=split).examples())
        assert len(examples) == 2
        for i, example in enumerate(examples):
            assert np.array_equal(example.image, images[i])
            np.testing.assert_allclose(example.depth, depth_mm[i] / 1000.0, rtol=0, atol=1e-6)
            # resized with nearest neighbour: every depth value is a measured one
            small = make_pair(example, size=12)[1]
            assert set(np.unique(small[..., 0])) <= set(np.unique(encode_depth(example.depth)[..., 0]))


# --------------------------------------------------------------------------------------------------------
# Oxford-IIIT Pets

PET_STEMS = {"Abyssinian_12": (1, 1), "american_pit_bull_terrier_1": (2, 2), "Bengal_3": (1, 3), "beagle_7": (2, 4)}


@pytest.fixture(scope="module")
def pets_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pets")
    (root / "images").mkdir()
    (root / "annotations" / "trimaps").mkdir(parents=True)
    trimaps = {}
    lines = ["#Image CLASS-ID SPECIES BREED ID", "#ID: 1:37 Class ids"]
    for n, (stem, (species, breed)) in enumerate(PET_STEMS.items()):
        h, w = 40 + 4 * n, 56
        trimap = np.full((h, w), 2, np.uint8)
        trimap[8:30, 10 + n:40] = 3
        trimap[10:28, 12 + n:38] = 1
        cv2.imwrite(str(root / "annotations" / "trimaps" / f"{stem}.png"), trimap)
        Image.fromarray(textured(h, w, n)).save(root / "images" / f"{stem}.jpg")
        trimaps[stem] = trimap
        lines.append(f"{stem} {n + 1} {species} {breed}")
    (root / "annotations" / "list.txt").write_text("\n".join(lines) + "\n")
    (root / "annotations" / "trainval.txt").write_text("\n".join(lines[2:5]) + "\n")
    (root / "annotations" / "test.txt").write_text(lines[5] + "\n")
    return root, trimaps


def test_pets_breeds_masks_and_negative_pairs(pets_root):
    root, trimaps = pets_root
    adapter = open_source("pets", root)
    assert adapter.breeds == ["Abyssinian", "Bengal", "american pit bull terrier"]
    examples = list(adapter.examples())
    seg = {e.image_id: e for e in examples if e.task == "segmentation"}
    assert set(seg) == {"Abyssinian_12", "american_pit_bull_terrier_1", "Bengal_3"}
    assert seg["american_pit_bull_terrier_1"].category == "american pit bull terrier"
    for stem, example in seg.items():
        assert np.array_equal(example.mask, trimaps[stem] == 1)
        assert iou(make_pair(example, 0)[1][..., 0] > 127, trimaps[stem] == 1) == 1.0
    cls = [e for e in examples if e.task == "classification"]
    positives = [e for e in cls if e.present]
    negatives = [e for e in cls if not e.present]
    assert len(positives) == len(negatives) == 3
    for e in positives:
        assert e.category == seg[e.image_id].category
    for e in negatives:
        assert e.category != seg[e.image_id].category and e.category in adapter.breeds
    # the target is a solid block of the colour the prompt names for the answer
    _, yes = make_pair(positives[0], 0, "red", "green")
    _, no = make_pair(negatives[0], 0, "red", "green")
    assert (yes == COLORS["red"]).all() and (no == COLORS["green"]).all()
    test_split = open_source("pets", root, split="test")
    assert [r.image_id for r in test_split.index(["segmentation"])] == ["beagle_7"]


def test_pets_missing_trimap_and_bad_list(tmp_path, pets_root):
    import shutil

    root, _ = pets_root
    copy = tmp_path / "pets"
    shutil.copytree(root, copy)
    (copy / "annotations" / "trimaps" / "Bengal_3.png").unlink()
    adapter = open_source("pets", copy)
    ref = next(r for r in adapter.index(["segmentation"]) if r.image_id == "Bengal_3")
    with pytest.raises(IcvError, match="missing trimap file: .*Bengal_3.png"):
        adapter.load(ref)
    (copy / "annotations" / "trainval.txt").write_text("Bengal_3 x\n")
    with pytest.raises(IcvError, match="trainval.txt line 1"):
        open_source("pets", copy)


def test_corrupt_image_names_the_file(tmp_path, pets_root):
    import shutil

    root, _ = pets_root
    copy = tmp_path / "pets"
    shutil.copytree(root, copy)
    (copy / "images" / "Abyssinian_12.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    adapter = open_source("pets", copy)
    with pytest.raises(IcvError, match="Abyssinian_12.jpg"):
        list(adapter.examples())
