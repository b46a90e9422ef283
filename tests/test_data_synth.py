"""Synthetic scenes: exact geometry (checked by back-projecting the depth), determinism, format, adapter."""

from __future__ import annotations

import hashlib
import json
import math

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from icv_deploy.errors import IcvError
from icv_deploy.training.cli import main as icv_data
from icv_deploy.training.datasets import open_source
from icv_deploy.training.synthetic import CATEGORIES, render_scene, write_scenes


def world_points(depth, camera):
    """Back-project z-depth to world points with the documented camera: at (0, height, 0), pitched down."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w] + 0.5
    x_cam = (u - camera["cx"]) / camera["fx"] * depth
    y_cam = (v - camera["cy"]) / camera["fy"] * depth  # image-down
    p = math.radians(camera["pitch_deg"])
    # world = origin + x_cam * right + y_cam * down + z_cam * forward
    wx = x_cam
    wy = camera["height_m"] - y_cam * math.cos(p) - depth * math.sin(p)
    wz = -y_cam * math.sin(p) + depth * math.cos(p)
    return np.stack([wx, wy, wz], -1)


def surface_distance(points, shape):
    """Distance of each point from the surface of the solid described by its annotation `shape`."""
    x, y, z = points[..., 0] - shape["x"], points[..., 1], points[..., 2] - shape["z"]
    radial = np.hypot(x, z)
    kind = shape["type"]
    if kind == "ball":
        return np.abs(np.sqrt(radial ** 2 + (y - shape["radius"]) ** 2) - shape["radius"])
    if kind == "cylinder":
        side = np.abs(radial - shape["radius"]) + np.where((y >= 0) & (y <= shape["height"]), 0, 1)
        top = np.abs(y - shape["height"]) + np.where(radial <= shape["radius"] + 1e-3, 0, 1)
        return np.minimum(side, top)
    if kind == "cone":
        return np.abs(radial - shape["radius"] * (shape["height"] - y) / shape["height"])
    # cube / pyramid: in the object's frame, the largest signed distance over its faces is 0 on the surface
    c, s = math.cos(shape["yaw"]), math.sin(shape["yaw"])
    a, b = x * c + z * s, -x * s + z * c
    half = shape["side"] / 2
    if kind == "cube":
        return np.abs(np.maximum.reduce([np.abs(a) - half, np.abs(b) - half, y - shape["side"], -y]))
    n = math.hypot(shape["height"], half)
    faces = [(shape["height"] * t + half * y - shape["height"] * half) / n for t in (a, -a, b, -b)]
    return np.abs(np.maximum.reduce(faces + [-y]))


def test_depth_is_exact_geometry_and_occlusion_follows_depth():
    for index in range(8):
        scene = render_scene(seed=11, index=index, size=96)
        assert 1 <= len(scene.objects) <= 4
        assert scene.depth.min() >= 0.5 and scene.depth.max() <= 10.0
        cam = scene.camera
        points = world_points(scene.depth, cam)
        background = scene.instances == 0
        on_ground = np.abs(points[..., 1]) < 1e-6
        on_wall = np.abs(points[..., 2] - cam["wall_z_m"]) < 1e-6
        assert (on_ground | on_wall)[background].all()
        for k, solid in enumerate(scene.objects, 1):
            pixels = scene.instances == k
            assert surface_distance(points[pixels], {"type": solid.category, "x": solid.x, "z": solid.z, **solid.params}).max() < 1e-6
            # occlusion: the object is nearer than the background (ground or wall) behind it
            p = math.radians(cam["pitch_deg"])
            v = np.nonzero(pixels)[0] + 0.5
            down = (v - cam["cy"]) / cam["fy"]
            dy, dz = -down * math.cos(p) - math.sin(p), -down * math.sin(p) + math.cos(p)
            t_ground = np.where(dy < 0, -cam["height_m"] / np.where(dy < 0, dy, -1), np.inf)
            t_back = np.minimum(t_ground, cam["wall_z_m"] / dz)
            assert (scene.depth[pixels] < t_back).all()


def test_same_seed_same_scene_other_seed_other_scene():
    a, b, c = render_scene(3, 5, 64), render_scene(3, 5, 64), render_scene(4, 5, 64)
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth, b.depth) and np.array_equal(a.instances, b.instances)
    assert not np.array_equal(a.rgb, c.rgb)


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_write_scenes_format_is_reproducible_and_resumes(tmp_path):
    first = write_scenes(tmp_path / "a", num=6, seed=2, size=64, progress=False)
    write_scenes(tmp_path / "b", num=3, seed=2, size=64, progress=False)
    write_scenes(tmp_path / "b", num=6, seed=2, size=64, progress=False)  # resumed / extended
    assert _digest(first) == _digest(tmp_path / "b")
    ann = json.loads((first / "annotations" / "000004.json").read_text())
    depth = cv2.imread(str(first / "depth" / "000004.png"), cv2.IMREAD_UNCHANGED)
    instances = cv2.imread(str(first / "instances" / "000004.png"), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16 and 500 <= depth.min() and depth.max() <= 10000
    scene = render_scene(2, 4, 64)
    assert np.array_equal(depth, np.round(scene.depth * 1000)) and np.array_equal(instances, scene.instances)
    for obj in ann["objects"]:
        ys, xs = np.nonzero(instances == obj["id"])
        assert obj["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] and obj["area"] == len(xs)
        assert obj["category"] in CATEGORIES
    with pytest.raises(IcvError, match="seed 2"):
        write_scenes(first, num=6, seed=3, size=64, progress=False)


def test_synth_adapter_examples(tmp_path):
    root = write_scenes(tmp_path / "s", num=5, seed=1, size=64, progress=False)
    adapter = open_source("synth", root)
    examples = list(adapter.examples())
    assert {e.task for e in examples} == {"segmentation", "detection", "depth", "classification"}
    for e in examples:
        ann = json.loads((root / "annotations" / f"{e.image_id}.json").read_text())
        instances = cv2.imread(str(root / "instances" / f"{e.image_id}.png"), cv2.IMREAD_UNCHANGED)
        ids = [o["id"] for o in ann["objects"] if o["category"] == e.category]
        if e.task == "segmentation":
            assert np.array_equal(e.mask, np.isin(instances, ids)) and e.mask.any()
        elif e.task == "detection":
            assert sorted(e.boxes.tolist()) == sorted(o["bbox"] for o in ann["objects"] if o["category"] == e.category)
        elif e.task == "depth":
            assert np.allclose(e.depth, render_scene(1, int(e.image_id), 64).depth, atol=5e-4)
        else:
            assert e.present == bool(ids)
    assert len(open_source("synth", root, split="test").index()) == 0  # scene 9 would be the first test scene


def test_corrupt_synth_annotation_names_the_file(tmp_path):
    root = write_scenes(tmp_path / "s", num=2, seed=1, size=64, progress=False)
    (root / "annotations" / "000001.json").write_text("{not json")
    with pytest.raises(IcvError, match="000001.json"):
        open_source("synth", root).index()
    result = CliRunner().invoke(icv_data, ["build", "--source", f"synth:{root}", "--out", str(tmp_path / "ds")])
    assert result.exit_code == 2 and "000001.json" in result.output


def test_cli_synth(tmp_path):
    result = CliRunner().invoke(icv_data, ["synth", "--out", str(tmp_path / "s"), "--num", "3", "--seed", "4", "--size", "64"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "s" / "rgb").glob("*.png"))) == 3
    result = CliRunner().invoke(icv_data, ["synth", "--out", str(tmp_path / "s"), "--num", "3", "--seed", "5", "--size", "64"])
    assert result.exit_code == 2 and "error:" in result.output
