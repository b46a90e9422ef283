"""Ray-solid intersections for the synthetic scenes (training/synthetic.py), vectorised over pixels.

Rays are o + t * d with per-pixel arrays (o and d broadcast to (..., 3)). The camera rays' d has a unit
component along the camera's forward axis, so the t of a hit is its z-depth. Each `hit_*` returns
(t, normal) with t = inf where the ray misses. Only + - * / sqrt: the same bits on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Solid:
    """One object: its category, colour name, footprint centre (x, z) and shape parameters (metres)."""

    category: str
    color: str
    x: float
    z: float
    params: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"type": self.category, "x": self.x, "z": self.z, **self.params}


def dot(a, b):
    # written out, not np.dot / @: BLAS may sum in another order (or with FMA) on another machine
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def normalize(v):
    return v / np.sqrt(dot(v, v))[..., None]


def hit_sphere(o, d, center, radius):
    oc = o - np.asarray(center)
    a, b, c = dot(d, d), 2.0 * dot(d, oc), dot(oc, oc) - radius * radius
    disc = b * b - 4 * a * c
    t = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.inf)
    t = np.where(t > 1e-6, t, np.inf)
    return t, (o + t[..., None] * d - np.asarray(center)) / radius


def hit_convex(o, d, planes):
    """Convex solid given as planes (n, k) with n . x <= k inside (Kay-Kajiya slabs, one plane at a time)."""
    shape = np.broadcast_shapes(o.shape, d.shape)[:-1]
    t_in, t_out = np.full(shape, -np.inf), np.full(shape, np.inf)
    normal = np.zeros(shape + (3,))
    for n, k in planes:
        n = np.asarray(n, dtype=np.float64)
        num, den = k - dot(o, n), dot(d, n)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = num / den
        entering, leaving = den < 0, den > 0
        better = entering & (t > t_in)
        t_in = np.where(better, t, t_in)
        normal[better] = n
        t_out = np.where(leaving & (t < t_out), t, t_out)
        t_out = np.where((den == 0) & (num < 0), -np.inf, t_out)  # parallel and outside the slab
    t = np.where((t_in <= t_out) & (t_in > 1e-6), t_in, np.inf)
    return t, normal


def hit_vertical_quadric(o, d, cx, cz, radius, height, cone: bool):
    """A cylinder (cone=False) or a cone with apex at the top (cone=True), base on the ground at (cx, cz)."""
    ox, oy, oz = o[..., 0] - cx, o[..., 1], o[..., 2] - cz
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    k2 = (radius / height) ** 2 if cone else 0.0
    q = height - oy
    a = dx * dx + dz * dz - k2 * dy * dy
    b = 2 * (ox * dx + oz * dz + k2 * q * dy)
    c = ox * ox + oz * oz - (k2 * q * q if cone else radius * radius)
    disc = b * b - 4 * a * c
    root = np.sqrt(np.maximum(disc, 0))
    best = np.full(np.broadcast_shapes(ox.shape, dx.shape), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in ((-b - root) / (2 * a), (-b + root) / (2 * a)):
            y = oy + t * dy
            ok = (disc >= 0) & (t > 1e-6) & (y >= 0) & (y <= height)
            best = np.where(ok & (t < best), t, best)
        side = best
        if not cone:  # the flat top
            t = (height - oy) / dy
            px, pz = ox + t * dx, oz + t * dz
            ok = (t > 1e-6) & (px * px + pz * pz <= radius * radius) & (t < best)
            best = np.where(ok, t, best)
    p = o + np.where(np.isfinite(best), best, 0)[..., None] * d
    gx, gz = p[..., 0] - cx, p[..., 2] - cz
    gy = k2 * (height - p[..., 1]) if cone else np.zeros_like(gx)
    normal = normalize(np.stack([gx, gy, gz], -1) + 1e-12)
    if not cone:
        normal = np.where(((best < side) & np.isfinite(best))[..., None], np.array([0.0, 1.0, 0.0]), normal)
    return best, normal


def _yaw_axes(yaw):
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([c, 0.0, s]), np.array([-s, 0.0, c])


def hit_solid(o, d, solid: Solid):
    p, center = solid.params, np.array([solid.x, 0.0, solid.z])
    up = np.array([0.0, 1.0, 0.0])
    if solid.category == "ball":
        return hit_sphere(o, d, center + up * p["radius"], p["radius"])
    if solid.category in ("cylinder", "cone"):
        return hit_vertical_quadric(o, d, solid.x, solid.z, p["radius"], p["height"], cone=solid.category == "cone")
    u, w = _yaw_axes(p["yaw"])
    half = p["side"] / 2
    if solid.category == "cube":
        planes = [(up, p["side"]), (-up, 0.0)]
        planes += [(e, dot(e, center) + half) for e in (u, -u, w, -w)]
        return hit_convex(o, d, planes)
    # pyramid: square base on the ground, apex above the centre
    planes = [(-up, 0.0)]
    for e in (u, -u, w, -w):
        n = p["height"] * e + half * up
        n = n / math.sqrt(dot(n, n))
        planes.append((n, dot(n, center + half * e)))
    return hit_convex(o, d, planes)
