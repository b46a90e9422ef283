"""Decoders: the image the model paints, v(y), back to the task's answer (docs/DESIGN.md 6).

The inverse of `encodings.py`, at the size asked for (`out_size` is (height, width), the input image's size;
None keeps the visual's size). All visuals are HxWx3 uint8 RGB.

Detection is the only decoder with real work: it finds pure blue rectangle outlines with OpenCV and never
looks at ground truth. Outlines of overlapping boxes cross and merge into one blob, so one contour per box
(RETR_EXTERNAL) loses boxes and the holes of RETR_CCOMP are pieces of boxes; instead we find the outlines'
corners and test the rectangles between them:

1. blue mask: HSV threshold around pure blue, closed with a 3x3 kernel to bridge compression gaps;
2. straight strokes: morphological opening with 1xL and Lx1 line kernels keeps horizontal and vertical
   strokes at least L long (L just over two line widths); where the two meet are corners and crossings;
3. every pair of junctions (top-left, bottom-right) spans a candidate rectangle, and so does every choice of
   a top, bottom, left and right edge among the strokes' edges and ends (a model paints corners worst, and a
   broken corner is no junction); each edge is snapped by
   up to a pixel to where its band is bluest, and the candidate is measured on the outline band that
   `encode_detection` would paint (width 1/128 of the long side, or the model's own `box_line_fraction`):
   every side must be mostly blue, and the ring just inside must not be (a blue blob, not an outline);
4. greedy selection explains the blue strokes with as few rectangles as possible: closed outlines before
   broken ones, largest first, keep one if it explains enough strokes no kept box explains yet; at the
   end drop any kept box whose outline the others explain (a rectangle around two touching boxes).

A box's score is `coverage * blueness`: coverage is the fraction of its outline band that is blue, blueness
the mean of (B - max(R, G)) / 255 over those blue pixels (1 for pure blue). Both lie in [0, 1], so does the
score: 1 for a box exactly as `encode_detection` draws it, lower for broken or off-colour outlines.
"""

from __future__ import annotations

import cv2
import numpy as np

from .encodings import COLORS, DEPTH_MAX_M, box_line_width
from .routing import DEFAULT_COLORS

# Pure blue is hue 120 on OpenCV's 0-180 scale. Saturation/value floors keep sky and pale blue out.
BLUE_HUE_RANGE = (108, 132)
BLUE_MIN_SATURATION = 200
BLUE_MIN_VALUE = 100

# Box acceptance: every side at least this blue, the whole outline at least MIN_COVERAGE.
MIN_SIDE_COVERAGE = 0.6
MIN_COVERAGE = 0.75
# Outlines whose every side is at least this blue count as closed and are tried before broken ones.
CLOSED_COVERAGE = 0.9
# A box must explain blue outline pixels that no better box explains already: at least this fraction of
# its own, and a stroke twice the shortest side long. It is dropped again if the other kept boxes explain
# at least REDUNDANT of them.
MIN_NEW_FRACTION = 0.05
REDUNDANT = 0.95
# A box whose inside, just within the outline, is mostly blue is a blue blob, not an outline.
MAX_INNER_BLUE = 0.6
# Bounds on the work for pathological pictures (a blue grid): a sane answer has far fewer of either.
MAX_JUNCTIONS = 100
MAX_STROKES = 16  # per direction, the longest, for the rectangles between stroke edges
MAX_CANDIDATES = 300
# Rectangles between stroke edges are many; those far below the acceptance bounds are dropped before edge snapping.
PREFILTER_MARGIN = 0.15


def _size(visual: np.ndarray, out_size) -> tuple[int, int]:
    return (visual.shape[0], visual.shape[1]) if out_size is None else (int(out_size[0]), int(out_size[1]))


def _checked(visual: np.ndarray) -> np.ndarray:
    visual = np.asarray(visual)
    if visual.ndim != 3 or visual.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {visual.shape}")
    return visual


def _channel_mean(visual: np.ndarray) -> np.ndarray:
    return _checked(visual).astype(np.float32).mean(axis=2)


def _resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if values.shape[:2] == size:
        return values
    return cv2.resize(values, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


# --- segmentation and depth --------------------------------------------------------------------------------
def decode_segmentation(visual: np.ndarray, out_size=None, threshold: float = 127) -> tuple[np.ndarray, np.ndarray]:
    """(mask bool, soft mask float32 in [0, 1]) at out_size: mean of the 3 channels, resized linearly, > threshold."""
    soft = _resize(_channel_mean(visual) / 255.0, _size(visual, out_size))
    soft = np.clip(soft, 0.0, 1.0).astype(np.float32)
    return soft > threshold / 255.0, soft


def decode_depth(visual: np.ndarray, out_size=None, max_depth: float = DEPTH_MAX_M) -> np.ndarray:
    """Depth in metres, float32 at out_size: mean of the 3 channels / 255 * max_depth, resized linearly."""
    depth = _channel_mean(visual) / 255.0 * max_depth
    return _resize(depth, _size(visual, out_size)).astype(np.float32)


# --- classification ----------------------------------------------------------------------------------------
def decode_classification(visual: np.ndarray, color_if_present: str, color_if_absent: str) -> tuple[bool, float]:
    """(present, score). The visual's colour is the per-channel median over pixels (a few stray pixels do not
    move it); score = (d_absent - d_present) / |c_present - c_absent|, where d are its distances to the two
    named colours. By the triangle inequality the score lies in [-1, 1]: 1 is exactly the 'present' colour,
    -1 exactly the 'absent' colour, 0 halfway; present means score > 0."""
    c_present = np.array(COLORS[color_if_present], dtype=np.float64)
    c_absent = np.array(COLORS[color_if_absent], dtype=np.float64)
    gap = float(np.linalg.norm(c_present - c_absent))
    if gap == 0:
        raise ValueError(f"classification colours {color_if_present!r} and {color_if_absent!r} are the same colour")
    pixels = _checked(visual).reshape(-1, 3).astype(np.float64)
    median = np.median(pixels, axis=0)
    score = (np.linalg.norm(median - c_absent) - np.linalg.norm(median - c_present)) / gap
    score = float(np.clip(score, -1.0, 1.0))
    return score > 0, score


# --- detection ---------------------------------------------------------------------------------------------
def blue_mask(visual: np.ndarray) -> np.ndarray:
    """uint8 0/1 mask of pure-ish blue pixels (the outline colour), closed with a 3x3 kernel."""
    hsv = cv2.cvtColor(np.ascontiguousarray(visual, dtype=np.uint8), cv2.COLOR_RGB2HSV)
    low = (BLUE_HUE_RANGE[0], BLUE_MIN_SATURATION, BLUE_MIN_VALUE)
    high = (BLUE_HUE_RANGE[1], 255, 255)
    mask = (cv2.inRange(hsv, low, high) > 0).astype(np.uint8)
    return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))


def _strokes(mask: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(horizontal, vertical): the parts of the mask that are straight strokes at least `length` long."""
    horizontal = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((1, length), np.uint8))
    vertical = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((length, 1), np.uint8))
    return horizontal, vertical


def _junctions(horizontal: np.ndarray, vertical: np.ndarray) -> np.ndarray:
    """Bounding boxes (x, y, w, h) of the places where a horizontal and a vertical stroke meet (at most
    MAX_JUNCTIONS, the largest)."""
    _, _, stats, _ = cv2.connectedComponentsWithStats(horizontal & vertical, connectivity=8)
    stats = stats[1:]
    return stats[np.argsort(-stats[:, 4], kind="stable")[:MAX_JUNCTIONS], :4]


class _Bands:
    """Blue fraction and blueness over boxes' outline bands, for many boxes at once (integral images)."""

    def __init__(self, mask: np.ndarray, blueness: np.ndarray, width: int):
        self.mask_sum = cv2.integral(mask.astype(np.uint8), sdepth=cv2.CV_64F)
        self.blue_sum = cv2.integral((blueness * mask).astype(np.float32), sdepth=cv2.CV_64F)
        self.width = width

    def sides(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4 sides, x0 y0 x1 y1): the top, bottom, left and right bands `encode_detection` paints."""
        x0, y0, x1, y1 = boxes.T
        t = np.minimum(self.width, np.minimum(np.maximum(1, (x1 - x0) // 2), np.maximum(1, (y1 - y0) // 2)))
        return np.stack([
            np.stack([x0, y0, x1, y0 + t], 1), np.stack([x0, y1 - t, x1, y1], 1),
            np.stack([x0, y0 + t, x0 + t, y1 - t], 1), np.stack([x1 - t, y0 + t, x1, y1 - t], 1)], axis=1)

    @staticmethod
    def _sum(table, rects):
        x0, y0, x1, y1 = rects[..., 0], rects[..., 1], rects[..., 2], rects[..., 3]
        return table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]

    def measure(self, boxes: np.ndarray):
        """Per box: blue fraction of each side (N, 4), of the whole band (N), mean blueness of its blue pixels (N)."""
        sides = self.sides(boxes)
        area = np.maximum(1, (sides[..., 2] - sides[..., 0]) * (sides[..., 3] - sides[..., 1]))
        blue = self._sum(self.mask_sum, sides)
        blueness = self._sum(self.blue_sum, sides).sum(1) / np.maximum(blue.sum(1), 1)
        return blue / area, blue.sum(1) / area.sum(1), blueness

    def inner_blue(self, boxes: np.ndarray) -> np.ndarray:
        """Blue fraction of the ring just inside each outline band: high for a blue blob, and for a box drawn
        one line width off (its ring is the neighbouring box's outline)."""
        t = self.width
        inner = boxes + np.array([t, t, -t, -t])
        big_enough = (inner[:, 2] - inner[:, 0] > 2 * t) & (inner[:, 3] - inner[:, 1] > 2 * t)
        _, fraction, _ = self.measure(np.where(big_enough[:, None], inner, boxes))
        return np.where(big_enough, fraction, 0.0)


def _spread(mask: np.ndarray, blueness: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The mask and blueness that outline bands are measured on. A model paints the middle of a wide outline pure blue
    and its edges mixed with the picture, so each blue pixel counts for the band pixels within half a line width of
    it (both dilated): a painted line narrower than the band still covers it. For outlines 3 px wide or more; thinner
    ones are measured as they are. (The one-pass demo's 3 px outlines: held-out mAP@0.5 0.02 measured as painted,
    0.40 spread; 2026-12-03.)"""
    reach = (width - 1) // 2
    kernel = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
    return cv2.dilate(mask, kernel), cv2.dilate((blueness * mask).astype(np.float32), kernel)


def _candidates(junctions: np.ndarray, width: int, min_side: int) -> np.ndarray:
    """Rectangles (x0, y0, x1, y1), x1/y1 exclusive, from each pair of junctions as top-left and bottom-right
    corners. A junction wider than a line is two lines side by side (touching boxes): its outer edges are
    tried both as the corner's outer edge and one line width in from the far side."""
    if len(junctions) == 0:
        return np.zeros((0, 4), dtype=np.int64)
    x, y, w, h = junctions.T.astype(np.int64)
    lefts, tops = (x, np.maximum(x, x + w - width)), (y, np.maximum(y, y + h - width))
    rights, bottoms = (x + w, np.minimum(x + w, x + width)), (y + h, np.minimum(y + h, y + width))
    top_left = np.unique(np.concatenate([np.stack([a, b], 1) for a in lefts for b in tops]), axis=0)
    bottom_right = np.unique(np.concatenate([np.stack([a, b], 1) for a in rights for b in bottoms]), axis=0)
    i, j = np.meshgrid(np.arange(len(top_left)), np.arange(len(bottom_right)), indexing="ij")
    boxes = np.concatenate([top_left[i.ravel()], bottom_right[j.ravel()]], axis=1)
    ok = (boxes[:, 2] - boxes[:, 0] >= min_side) & (boxes[:, 3] - boxes[:, 1] >= min_side)
    return np.unique(boxes[ok], axis=0)


def _stroke_edge_candidates(horizontal: np.ndarray, vertical: np.ndarray, width: int, min_side: int) -> np.ndarray:
    """Rectangles (x0, y0, x1, y1) whose top and bottom edges are edges of horizontal strokes or ends of vertical ones,
    and whose left and right edges are edges of vertical strokes or ends of horizontal ones (MAX_STROKES longest of
    each direction). A one-pass model paints an outline's corners worst: a gap there leaves no junction for
    `_candidates`, though every side is drawn. A stroke about two lines thick (two boxes' lines side by side) offers
    its outer edges and the edges one line width in from them."""
    def longest(strokes, axis):  # lines at most two line widths thick: a filled blue blob is no line
        _, _, stats, _ = cv2.connectedComponentsWithStats(strokes, connectivity=8)
        stats = stats[1:].astype(np.int64)
        stats = stats[stats[:, 3 - axis] <= 2 * width + 1]
        return stats[np.argsort(-stats[:, 2 + axis], kind="stable")[:MAX_STROKES]]

    def edges(start, length):  # (edges a box may start at, edges it may end at), across the stroke
        double = length >= 2 * width - 1
        return (np.concatenate([start, (start + length - width)[double]]),
                np.concatenate([start + length, (start + width)[double]]))

    h, v = longest(horizontal, 0), longest(vertical, 1)  # rows (x, y, w, h, area)
    tops, bottoms = edges(h[:, 1], h[:, 3])
    lefts, rights = edges(v[:, 0], v[:, 2])
    tops, bottoms = np.unique(np.concatenate([tops, v[:, 1]])), np.unique(np.concatenate([bottoms, v[:, 1] + v[:, 3]]))
    lefts, rights = np.unique(np.concatenate([lefts, h[:, 0]])), np.unique(np.concatenate([rights, h[:, 0] + h[:, 2]]))

    def spans(starts, ends):
        a, b = np.meshgrid(starts, ends, indexing="ij")
        ok = b - a >= min_side
        return np.stack([a[ok], b[ok]], 1)

    xs, ys = spans(lefts, rights), spans(tops, bottoms)
    i, j = np.meshgrid(np.arange(len(xs)), np.arange(len(ys)), indexing="ij")
    i, j = i.ravel(), j.ravel()
    return np.stack([xs[i, 0], ys[j, 0], xs[i, 1], ys[j, 1]], 1).reshape(-1, 4)


def _snap_edges(boxes: np.ndarray, bands: _Bands, height: int, width: int) -> np.ndarray:
    """Move each edge by at most one pixel to where its side band is bluest (compression can eat the
    corner pixel a junction's extent was read from). Ties keep the edge where it is."""
    limits = np.array([width, height, width, height])
    side_of_edge = {0: 2, 1: 0, 2: 3, 3: 1}  # x0 -> left band, y0 -> top, x1 -> right, y1 -> bottom
    boxes = boxes.copy()
    for edge, side in side_of_edge.items():
        tries = []
        for offset in (0, -1, 1):
            moved = boxes.copy()
            moved[:, edge] = np.clip(moved[:, edge] + offset, 0, limits[edge])
            tries.append((moved, bands.measure(moved)[0][:, side]))
        best = np.argmax(np.stack([fraction for _, fraction in tries]), axis=0)
        boxes = np.stack([moved for moved, _ in tries])[best, np.arange(len(boxes))]
    return boxes


def _drop_shifted_duplicates(boxes, scores, inner, closed, width):
    """Of boxes whose edges all lie within one line width of each other, keep the best by score times the
    fraction of non-blue just inside its outline. Two touching boxes draw a double-width line that fits a
    box ending at either of its edges; the wrong one has the neighbour's line just inside its own."""
    keep = np.ones(len(boxes), dtype=bool)
    for i in np.argsort(-scores * (1.0 - inner), kind="stable"):
        if keep[i]:
            near = np.all(np.abs(boxes - boxes[i]) <= width, axis=1)
            near[i] = False
            keep &= ~near
    return boxes[keep], scores[keep], closed[keep]


def _band_in_window(sides: np.ndarray, strokes: np.ndarray, pad: int):
    """One box's outline band, grown by `pad` pixels (tolerance for blurred strokes), as the stroke pixels
    it covers within the box's window: (window slices, boolean band of the window's shape)."""
    x0, y0 = max(0, int(sides[:, 0].min()) - pad), max(0, int(sides[:, 1].min()) - pad)
    x1, y1 = int(sides[:, 2].max()) + pad, int(sides[:, 3].max()) + pad
    window = (slice(y0, y1), slice(x0, x1))
    band = np.zeros_like(strokes[window])
    for sx0, sy0, sx1, sy1 in sides.tolist():
        band[max(0, sy0 - pad - y0):sy1 + pad - y0, max(0, sx0 - pad - x0):sx1 + pad - x0] = True
    return window, band & strokes[window]


def _explain_strokes(boxes: np.ndarray, scores: np.ndarray, strokes: np.ndarray, bands: _Bands,
                     min_new: int) -> list[int]:
    """Greedy set cover of the blue strokes by the boxes, taken in the order given; then drop, weakest and
    latest first, boxes whose blue outline the other kept boxes explain. Returns the indices kept.

    Largest first: a box crossed by another is kept before the pieces the crossing cuts it into, which
    then explain nothing new. A rectangle spanning several boxes' lines (around two touching boxes, say)
    may be kept first, but each real box adds its own line, and the rectangle is dropped at the end."""
    kept: dict[int, tuple] = {}
    explained = np.zeros(strokes.shape, dtype=np.int32)  # how many kept boxes' bands cover each pixel
    for index, sides in enumerate(bands.sides(boxes)):
        window, band = _band_in_window(sides, strokes, pad=1)
        n_blue = int(band.sum())
        new = int((band & (explained[window] == 0)).sum())
        if n_blue and new >= MIN_NEW_FRACTION * n_blue and new >= min_new:
            kept[index] = (window, band)
            explained[window] += band
    for index in sorted(kept, key=lambda i: (scores[i], -i)):
        window, band = kept[index]
        if (band & (explained[window] - band > 0)).sum() >= REDUNDANT * band.sum():
            del kept[index]
            explained[window] -= band
    return sorted(kept)


def outline_bands(visual: np.ndarray, width: int) -> tuple[np.ndarray, _Bands, _Bands]:
    """(blue mask, its bands as painted, the bands outlines are measured on) of a uint8 RGB visual whose outlines are
    `width` pixels wide. As painted: the ring inside an outline, where a blob is blue without help. Measured on:
    the painted blue spread for outlines 3 px or wider (_spread), tolerant of lines painted narrower than that."""
    mask = blue_mask(visual)
    rgb = visual.astype(np.float32)
    blueness = np.clip((rgb[..., 2] - np.maximum(rgb[..., 0], rgb[..., 1])) / 255.0, 0.0, 1.0)
    painted = _Bands(mask, blueness, width)
    return mask, painted, (_Bands(*_spread(mask, blueness, width), width) if width >= 3 else painted)


def _covered(per_side: np.ndarray, coverage: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Whether each outline is blue enough to be a box (every side MIN_SIDE_COVERAGE, the whole MIN_COVERAGE), each
    bound lowered by `margin`."""
    return (per_side.min(1, initial=1.0) >= MIN_SIDE_COVERAGE - margin) & (coverage >= MIN_COVERAGE - margin)


def decode_detection(visual: np.ndarray, out_size=None, min_area_frac: float = 2e-4,
                     line_fraction: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(boxes N x 4 float32 x0 y0 x1 y1 in out_size pixels, x1/y1 exclusive; scores N float32 in [0, 1]),
    best first. Boxes smaller than min_area_frac of the image, or with a side too short to leave a hole
    inside the outline, are dropped. `line_fraction`: the outline width the model paints (box_line_width).
    See the module docstring for the method and the score."""
    visual = np.ascontiguousarray(_checked(visual), dtype=np.uint8)
    h, w = visual.shape[:2]
    width = box_line_width(h, w, line_fraction)
    min_side = 2 * width + 3  # odd: an even-length opening kernel shifts strokes by a pixel
    mask, painted, bands = outline_bands(visual, width)

    horizontal, vertical = _strokes(mask, min_side)
    between_strokes = _stroke_edge_candidates(horizontal, vertical, width, min_side)
    between_strokes = between_strokes[_covered(*bands.measure(between_strokes)[:2], margin=PREFILTER_MARGIN)]
    boxes = np.concatenate([_candidates(_junctions(horizontal, vertical), width, min_side), between_strokes])
    boxes = np.unique(_snap_edges(boxes, bands, h, w), axis=0).reshape(-1, 4)
    boxes = boxes[(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) >= min_area_frac * h * w]
    per_side, coverage, mean_blueness = bands.measure(boxes)
    inner = painted.inner_blue(boxes)
    ok = _covered(per_side, coverage) & (inner <= MAX_INNER_BLUE)
    scores, closed = coverage * mean_blueness, per_side.min(1, initial=1.0) >= CLOSED_COVERAGE
    ok = np.flatnonzero(ok)[np.argsort(-scores[ok], kind="stable")[:MAX_CANDIDATES]]
    boxes, scores, closed = _drop_shifted_duplicates(boxes[ok], scores[ok], inner[ok], closed[ok], width)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    # Closed outlines first, then partly broken ones (often a rectangle spanning several boxes' lines);
    # within each, largest first (see _explain_strokes).
    order = np.lexsort((-scores, -area, ~closed))
    boxes, scores = boxes[order], scores[order]
    strokes = (horizontal | vertical).astype(bool)
    # min_new in pixels, not line widths: a model may paint a wide outline one pixel thin (_spread)
    kept = _explain_strokes(boxes, scores, strokes, bands, min_new=2 * min_side)
    boxes, scores = boxes[kept].astype(np.float32), scores[kept].astype(np.float32)

    out_h, out_w = _size(visual, out_size)
    boxes *= np.array([out_w / w, out_h / h, out_w / w, out_h / h], dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    return boxes[order].reshape(-1, 4), scores[order]


# --- all tasks -----------------------------------------------------------------------------------------------
def decode(task: str, visual: np.ndarray, route=None, out_size=None, box_line_fraction: float | None = None) -> dict:
    """Decode a visual for `task` into the Result's fields (mask and soft_mask / boxes and scores / depth /
    present and score). `route` (from routing.route) supplies the classification colours; `box_line_fraction` the
    model's outline width (box_line_width)."""
    if task == "segmentation":
        mask, soft = decode_segmentation(visual, out_size)
        return {"mask": mask, "soft_mask": soft}
    if task == "detection":
        boxes, scores = decode_detection(visual, out_size, line_fraction=box_line_fraction)
        return {"boxes": boxes, "scores": scores}
    if task == "depth":
        return {"depth": decode_depth(visual, out_size)}
    if task == "classification":
        colors = (route.color_if_present, route.color_if_absent) if route is not None else (None, None)
        if None in colors:
            colors = DEFAULT_COLORS
        present, score = decode_classification(visual, *colors)
        return {"present": present, "score": score}
    raise ValueError(f"unknown task {task!r}")
