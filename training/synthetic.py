"""Synthetic scenes with exact ground truth for all four tasks (`icv-data synth`), ray-cast with numpy.

A scene: a pinhole camera 1.2-1.8 m above a textured ground plane, pitched 4-18 degrees down, looking at a
textured backdrop wall 6-9 m away; 1 to 4 solid objects (CATEGORIES: ball, cube, cylinder, cone, pyramid;
OBJECT_COLORS) standing on the ground at different distances, lit by one directional light that casts
shadows. Every pixel's ray is intersected with every surface and the nearest hit wins, so occlusion follows
depth order exactly. Depth is z-depth along the optical axis (like NYUv2), always within 0.5-10 m.
Objects hidden below 0.2% of the image (at least 12 pixels) are removed before the scene is finalised.

Geometry (recorded per scene, so the ground truth can be re-derived): world x right, y up, z forward
(horizontal); ground y = 0; wall z = wall_z_m; camera at (0, height_m, 0) pitched down by pitch_deg;
pixel (u, v) looks through (u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy. Object "shape": {"type", "x", "z"
(footprint centre), then "radius" (ball), "radius", "height" (cylinder, cone: apex up), "side", "yaw"
(cube), "side", "height", "yaw" (pyramid, square base)}.

Determinism: each scene draws from its own `numpy.random.default_rng([seed, index])`; per-pixel maths uses
only + - * / sqrt, floor and integer hashing (IEEE-exact), never BLAS or per-pixel transcendental
functions, so the same seed gives the same files on any machine with the same numpy random streams
(scalar sin/cos come from the platform libm, correctly rounded on glibc).

On-disk format (read by training/datasets/synth.py), DIR/:
    synth.json                  {"format": "icv-synth-v1", "seed", "size", "num", "categories", "colors", ...}
    rgb/{id}.png                8-bit RGB, size x size
    depth/{id}.png              16-bit grey, depth in millimetres (every pixel valid: 500..10000)
    instances/{id}.png          8-bit grey: 0 = ground or backdrop, k = the object with "id" k
    annotations/{id}.json       {"image_id", "width", "height", "camera": {fx, fy, cx, cy, height_m,
                                 pitch_deg, wall_z_m}, "objects": [{"id", "category", "color", "bbox"
                                 [x0, y0, x1, y1] (x1/y1 exclusive, tight around the visible pixels),
                                 "area" (visible pixels), "distance_m" (nearest visible z-depth), "shape"}]}
with {id} the 6-digit scene index. The annotation JSON is written last: a scene that has one is complete,
so a rerun resumes (and a larger --num extends the folder).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from icv_deploy.atomic import write_json
from icv_deploy.errors import IcvError
from icv_deploy.tasks.encodings import COLORS

from .raycast import Solid, dot, normalize, hit_solid

CATEGORIES = ("ball", "cube", "cylinder", "cone", "pyramid")
# Object colours: no blue (detection targets draw pure blue boxes) and no near-black.
OBJECT_COLORS = ("red", "green", "yellow", "orange", "purple", "white", "pink", "brown", "cyan", "magenta")
MIN_DEPTH_M, MAX_DEPTH_M = 0.5, 10.0
# The ranges the scene parameters are drawn from, uniformly and independently. Nothing in a picture says its metric
# scale outright: it has to be read from these priors (benchmarks/depth_scale_bound.py).
CAMERA_HEIGHT_M = (1.2, 1.8)
WALL_DISTANCE_M = (6.0, 9.0)
OBJECT_SIZES_M = {"ball": {"radius": (0.2, 0.45)},
                  "cylinder": {"radius": (0.15, 0.4), "height": (0.4, 1.1)},
                  "cone": {"radius": (0.15, 0.4), "height": (0.4, 1.1)},
                  "cube": {"side": (0.35, 0.9)},
                  "pyramid": {"side": (0.35, 0.9), "height": (0.4, 0.9)}}
FORMAT = "icv-synth-v1"


# --------------------------------------------------------------------------------------------------------
# Textures: integer hashing, so that they are the same on every machine.


def _hash01(ix, iz, salt):
    h = (ix.astype(np.int64) * 73856093) ^ (iz.astype(np.int64) * 19349663) ^ np.int64(salt)
    h = (h * 2654435761) & 0xFFFFFFFF
    return ((h >> 8) & 0xFFFF) / 65535.0


def _rand_color(rng, low=40, high=220):
    """A random surface colour that is never mostly blue (blue is the colour of detection boxes)."""
    color = rng.uniform(low, high, size=3)
    if color[2] > max(color[0], color[1]):
        color = color[[2, 0, 1]]
    return color


@dataclass
class Scene:
    rgb: np.ndarray        # HxWx3 uint8
    depth: np.ndarray      # HxW float64 metres
    instances: np.ndarray  # HxW uint8, 0 = background, k = objects[k - 1]
    objects: list          # Solid
    camera: dict


def _camera(rng, size):
    hfov = math.radians(rng.uniform(45, 60))
    pitch = math.radians(rng.uniform(4, 18))
    f = (size / 2) / math.tan(hfov / 2)
    cam = {"fx": f, "fy": f, "cx": size / 2, "cy": size / 2, "height_m": float(rng.uniform(*CAMERA_HEIGHT_M)),
           "pitch_deg": math.degrees(pitch), "wall_z_m": float(rng.uniform(*WALL_DISTANCE_M))}
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    a, b = (u + 0.5 - cam["cx"]) / f, (v + 0.5 - cam["cy"]) / f
    cp, sp = math.cos(pitch), math.sin(pitch)
    # camera axes in the world: right (1,0,0), image-down (0,-cos p,-sin p), forward (0,-sin p,cos p)
    d = np.stack([a, -b * cp - sp, -b * sp + cp], -1)
    return cam, np.array([0.0, cam["height_m"], 0.0]), d


def _place_objects(rng, cam, n):
    objects = []
    tan_half = cam["cx"] / cam["fx"]
    for _ in range(n):
        category = CATEGORIES[rng.integers(len(CATEGORIES))]
        color = OBJECT_COLORS[rng.integers(len(OBJECT_COLORS))]
        sizes = OBJECT_SIZES_M[category]
        if category == "ball":
            params = {"radius": rng.uniform(*sizes["radius"])}
            reach = params["radius"]
        elif category in ("cylinder", "cone"):
            params = {"radius": rng.uniform(*sizes["radius"]), "height": rng.uniform(*sizes["height"])}
            reach = params["radius"]
        else:
            params = {"side": rng.uniform(*sizes["side"]), "yaw": rng.uniform(0, math.pi / 2)}
            if category == "pyramid":
                params["height"] = rng.uniform(*sizes["height"])
            reach = params["side"] * 0.71
        for _try in range(30):
            z = rng.uniform(1.8, cam["wall_z_m"] - 1.0)
            x = rng.uniform(-0.8, 0.8) * z * tan_half
            if all((x - s.x) ** 2 + (z - s.z) ** 2 > (reach + s.params["_reach"] + 0.1) ** 2 for s in objects):
                objects.append(Solid(category, color, float(x), float(z), {**params, "_reach": reach}))
                break
    return objects


def _screen_rect(solid: Solid, cam: dict, size: int):
    """Pixel rows and columns (slices) that can see the solid: its bounding box projected, plus a margin."""
    p = solid.params
    top = 2 * p["radius"] if solid.category == "ball" else p.get("height", p.get("side"))
    reach, pitch = p["_reach"], math.radians(cam["pitch_deg"])
    us, vs = [], []
    for x in (solid.x - reach, solid.x + reach):
        for z in (solid.z - reach, solid.z + reach):
            for y in (0.0, top):
                dy = y - cam["height_m"]
                z_cam = -dy * math.sin(pitch) + z * math.cos(pitch)
                us.append(cam["fx"] * x / z_cam + cam["cx"])
                vs.append(cam["fy"] * (-dy * math.cos(pitch) - z * math.sin(pitch)) / z_cam + cam["cy"])
    clip = lambda a: int(min(max(a, 0), size))  # noqa: E731
    return slice(clip(math.floor(min(vs)) - 1), clip(math.ceil(max(vs)) + 2)), \
        slice(clip(math.floor(min(us)) - 1), clip(math.ceil(max(us)) + 2))


def _trace(o, d, cam, objects):
    """Nearest hit per camera ray: (t, normal, surface id): 0 ground, -1 wall, k >= 1 object k.
    Each object is only tested on the pixels of its projected bounding box."""
    shape = d.shape[:-1]
    with np.errstate(divide="ignore"):
        t_ground = np.where(d[..., 1] < 0, -o[..., 1] / d[..., 1], np.inf)
        t_wall = np.where(d[..., 2] > 0, (cam["wall_z_m"] - o[..., 2]) / d[..., 2], np.inf)
    t = np.minimum(t_ground, t_wall)
    surface = np.where(t_ground <= t_wall, 0, -1)
    normal = np.zeros(shape + (3,))
    normal[surface == 0] = (0, 1, 0)
    normal[surface == -1] = (0, 0, -1)
    for k, solid in enumerate(objects, 1):
        rect = _screen_rect(solid, cam, shape[0])
        t_k, n_k = hit_solid(o, d[rect], solid)
        nearer = t_k < t[rect]
        t[rect] = np.where(nearer, t_k, t[rect])
        surface[rect] = np.where(nearer, k, surface[rect])
        normal[rect][nearer] = n_k[nearer]
    return t, normal, surface


def _shade(rng, o, d, t, normal, surface, cam, objects, salt):
    p = o + t[..., None] * d
    size = t.shape[0]
    # Ground: checkerboard of two colours with hashed fine grain; fades to its mean colour far away.
    tile = rng.uniform(0.4, 1.0)
    c1, c2 = _rand_color(rng), _rand_color(rng)
    ix, iz = np.floor(p[..., 0] / tile).astype(np.int64), np.floor(p[..., 2] / tile).astype(np.int64)
    checker = ((ix + iz) & 1).astype(np.float64)[..., None]
    grain = _hash01(np.floor(p[..., 0] / 0.07), np.floor(p[..., 2] / 0.07), salt)[..., None]
    ground = (checker * c1 + (1 - checker) * c2) * (0.85 + 0.3 * grain)
    fade = np.clip((t - 3.0) / 6.0, 0, 1)[..., None] * np.clip(2.0 * 64 / size, 0.3, 1.0)
    ground = ground * (1 - fade) + fade * (c1 + c2) / 2
    # Backdrop: bricks or stripes in a base colour, brighter towards the top.
    base, mortar = _rand_color(rng, 60, 230), _rand_color(rng, 30, 200)
    row_h = rng.uniform(0.2, 0.5)
    row = np.floor(p[..., 1] / row_h)
    if rng.random() < 0.5:
        brick_x = p[..., 0] / (2 * row_h) + 0.5 * (row.astype(np.int64) & 1)  # odd rows shifted half a brick
        brick_y = p[..., 1] / row_h
        joint = (np.abs(brick_y - np.round(brick_y)) < 0.06) | (np.abs(brick_x - np.round(brick_x)) < 0.03)
        shade = 0.8 + 0.4 * _hash01(np.floor(brick_x), row, salt + 1)
        wall = np.where(joint[..., None], mortar, base * shade[..., None])
    else:
        stripe = (row.astype(np.int64) & 1).astype(np.float64)[..., None]
        wall = stripe * base + (1 - stripe) * mortar
    wall = wall * (0.8 + 0.06 * np.clip(p[..., 1], 0, 5))[..., None]
    albedo = np.where((surface == 0)[..., None], ground, wall)
    for k, solid in enumerate(objects, 1):
        albedo[surface == k] = COLORS[solid.color]
    # Light from above, in front of the camera's side; shadows: is the way to the light blocked?
    light = normalize(np.array([rng.uniform(-0.8, 0.8), rng.uniform(0.8, 1.5), rng.uniform(-0.9, -0.2)]))
    lambert = np.clip(dot(normal, light), 0, 1)
    start = p + normal * 1e-4
    lit = lambert.copy()
    receives = (surface >= 0) & (lambert > 0)  # the wall is too far behind the objects to catch shadows
    towards_light = np.broadcast_to(light, (int(receives.sum()), 3))
    blocked = np.zeros(towards_light.shape[0], bool)
    for solid in objects:
        blocked |= np.isfinite(hit_solid(start[receives], towards_light, solid)[0])
    lit[receives] = np.where(blocked, 0.0, lambert[receives])
    ambient = 0.45 + 0.1 * np.clip(normal[..., 1], 0, 1)
    rgb = albedo * (ambient + 0.6 * lit)[..., None]
    rgb = rgb + rng.normal(0, 2.0, size=rgb.shape)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def render_scene(seed: int, index: int, size: int = 128) -> Scene:
    """Scene `index` of the seed: the same arrays on every machine."""
    rng = np.random.default_rng([seed, index])
    min_pixels = max(12, int(0.002 * size * size))
    while True:
        cam, o, d = _camera(rng, size)
        objects = _place_objects(rng, cam, int(rng.integers(1, 5)))
        while objects:
            t, normal, surface = _trace(o, d, cam, objects)
            areas = [int((surface == k).sum()) for k in range(1, len(objects) + 1)]
            if min(areas) >= min_pixels:
                break
            objects = [s for s, area in zip(objects, areas) if area >= min_pixels]  # drop the hidden, retrace
        if objects:
            break
    rgb = _shade(rng, o, d, t, normal, surface, cam, objects, salt=seed * 1000003 + index)
    assert MIN_DEPTH_M <= t.min() and t.max() <= MAX_DEPTH_M, (t.min(), t.max())
    for s in objects:
        s.params.pop("_reach", None)
    return Scene(rgb=rgb, depth=t, instances=np.maximum(surface, 0).astype(np.uint8), objects=objects, camera=cam)


def annotation(scene: Scene, image_id: str, depth_mm: np.ndarray) -> dict:
    h, w = scene.depth.shape
    objects = []
    for k, solid in enumerate(scene.objects, 1):
        ys, xs = np.nonzero(scene.instances == k)
        objects.append({
            "id": k, "category": solid.category, "color": solid.color,
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
            "area": int(len(xs)), "distance_m": float(depth_mm[ys, xs].min()) / 1000.0,
            "shape": solid.to_json(),
        })
    return {"image_id": image_id, "width": w, "height": h, "camera": scene.camera, "objects": objects}


def _write_file(path: Path, data: bytes) -> None:
    """Write beside, then rename: a crashed run never leaves a half-written file under the final name.
    No fsync per file (it would cost more than rendering); scenes are cheap to re-render."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", array)
    if not ok:
        raise IcvError(f"cannot encode {path}")
    _write_file(path, data.tobytes())


def write_scenes(out: str | Path, num: int, seed: int = 0, size: int = 128, progress: bool = True) -> Path:
    """Render scenes 0..num-1 into `out` (format in the module docstring). Scenes already there are kept:
    an interrupted run resumes, and a larger `num` extends a folder. Returns `out`."""
    out = Path(out)
    if not 64 <= size <= 512:
        raise IcvError(f"--size must be between 64 and 512, not {size}")
    meta = {"format": FORMAT, "seed": seed, "size": size, "categories": list(CATEGORIES),
            "colors": list(OBJECT_COLORS), "depth_png_scale": "millimetres", "min_depth_m": MIN_DEPTH_M,
            "max_depth_m": MAX_DEPTH_M}
    meta_file = out / "synth.json"
    if meta_file.exists():
        old = json.loads(meta_file.read_text())
        if (old.get("format"), old.get("seed"), old.get("size")) != (FORMAT, seed, size):
            raise IcvError(f"{out} holds scenes of seed {old.get('seed')} size {old.get('size')}; "
                           f"use another --out for seed {seed} size {size}")
    out.mkdir(parents=True, exist_ok=True)
    write_json(meta_file, {**meta, "num": max(num, _count(out))})
    for index in tqdm(range(num), desc="synth", unit="scene", disable=not progress):
        image_id = f"{index:06d}"
        if (out / "annotations" / f"{image_id}.json").exists():
            continue
        scene = render_scene(seed, index, size)
        depth_mm = np.round(scene.depth * 1000).astype(np.uint16)
        _write_png(out / "rgb" / f"{image_id}.png", cv2.cvtColor(scene.rgb, cv2.COLOR_RGB2BGR))
        _write_png(out / "depth" / f"{image_id}.png", depth_mm)
        _write_png(out / "instances" / f"{image_id}.png", scene.instances)
        text = json.dumps(annotation(scene, image_id, depth_mm), indent=1) + "\n"
        _write_file(out / "annotations" / f"{image_id}.json", text.encode())  # last: marks the scene complete
    return out


def _count(out: Path) -> int:
    return len(list((out / "annotations").glob("*.json"))) if (out / "annotations").is_dir() else 0
