"""The ultrasound fan of a screenshot: found, modelled as a sector, and masked.

A scanner's screen is a dark background (black, or a dark grey such as 12) with the image (a
sector for curvilinear and radial probes, a rectangle for linear ones) and text, calipers and
measurement boxes printed around it. ``find`` works on a copy downscaled to at most ``WORK``
pixels a side (every ``MAX_STEP``-th pixel at most, for larger screens):

1. the background level is the most common dark gray level of the image's outer ring (none
   when under a quarter of the ring is within ``RING_TOLERANCE`` of it: the image has no border);
2. foreground is everything more than ``MARGIN`` above it (``MARGIN_LOSSY`` for a JPEG: its
   ringing around text and edges stays under that);
3. the fan is the 8-connected foreground component with the largest area times solidity (its
   share of its box): text and calipers are small and sparse, a fan is large and solid;
4. each side is the line from the convex hull's top corner on that side to its outermost point
   (dark tissue along an edge bends the outline, never the hull); where they meet, above the
   image, is the apex. The sector (apex, inner and outer radius, two angles, as
   SlicerUltrasound's fan mask) intersected with the hull is the mask;
5. sides that do not converge make a rectangle (a linear probe) when the component fills its
   box; anything else is masked by the component's convex hull alone.

The hull is a function of the fan's own pixels, so text that is not joined to the fan never
changes it. The mask is *known* (figures may show these pixels) when a sector or rectangle
explains the component: model and hull agree (intersection over union at least ``MIN_COVER``)
and no more than a few pixels of the component lie beyond ``SLACK`` working pixels outside the
model (text joined to the fan); on a colour screenshot of a gray image, no coloured overlay lies
inside. Otherwise the pixels are masked the same way, but ``known`` is False with the reason,
and figures made from them are withheld.

Everything but the mask itself is done on the downscaled copy; at full size the job is one
polygon fill (Pillow) and, for a sector with an inner arc, the rows that arc reaches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

WORK = 128  # the fan is found on a copy at most this many pixels a side (for screens up to 512 px)
MAX_STEP = 4  # ... sampling at most every 4th pixel, so a 4 px gap between text and fan stays a gap
MARGIN = 4  # gray levels above the estimated background that count as foreground (lossless image)
MARGIN_LOSSY = 10  # ... on a lossy (JPEG) one, whose ringing next to text and edges reaches 6-9
DARK = 48  # a screen's background is at most this gray level
RING_TOLERANCE = 3  # ring pixels within this of the mode count as background
MIN_COVER = 0.9  # a model and the component's hull agree this well (intersection over union) when known
RECTANGLE = 0.97  # a component filling this share of its box is a rectangle (a linear probe)
SLACK = 2  # working pixels outside the model a component may spill (JPEG halo, fit error)
MAX_SPILL = 0.004  # ... and beyond SLACK, at most this share of the model (else: text joined on)
COLOUR = 40  # max - min channel above this is a coloured pixel (an overlay on a gray image)


@dataclass(frozen=True)
class Fan:
    """A found fan: its box (x0, y0, x1, y1, full-size pixels, x1 and y1 exclusive), the mask
    within the box, the model that made it, and whether figures may show its pixels."""

    box: tuple[int, int, int, int]
    mask: np.ndarray  # bool, box-sized
    shape: str  # "sector", "rectangle" or "component"
    known: bool
    reason: str = ""  # why the mask is not known


def background(gray: np.ndarray) -> int | None:
    """The screen's background level: the most common dark level (at most ``DARK``) of the
    outer ring; None when under a quarter of the ring is near it (no border: a clean crop). A
    sector may run to the image's edges, so the ring need not be mostly background."""
    ring = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    counts = np.bincount(ring, minlength=256)[:DARK + 1]
    level = int(np.argmax(counts))
    near = counts[max(0, level - RING_TOLERANCE):level + RING_TOLERANCE + 1].sum()
    return level if near * 4 >= ring.size else None


def _edge_points(component: np.ndarray, columns: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of each row's first and last and (``columns``) each column's first and last pixel."""
    height, width = component.shape
    rows = np.flatnonzero(component.any(axis=1))
    left = np.argmax(component[rows], axis=1)
    right = width - 1 - np.argmax(component[rows, ::-1], axis=1)
    if not columns:
        return np.concatenate([rows, rows]).astype(float), np.concatenate([left, right]).astype(float)
    cols = np.flatnonzero(component.any(axis=0))
    top = np.argmax(component[:, cols], axis=0)
    bottom = height - 1 - np.argmax(component[::-1, cols], axis=0)
    return (np.concatenate([rows, rows, top, bottom]).astype(float),
            np.concatenate([left, right, cols, cols]).astype(float))


def _side(hull: np.ndarray, sign: int, min_rows: float) -> tuple[float, float] | None:
    """A side of the sector (sign -1: left, +1: right) as (x at y=0, dx/dy): the line from the
    hull's outermost vertex near its top (the top corner on that side) to its outermost vertex
    (the highest of several); None when
    they are under ``min_rows`` rows apart or not slanted like a sector's side."""
    ys, xs = hull[:, 0], hull[:, 1]
    band = np.flatnonzero(ys <= ys.min() + min_rows)  # the top corner on this side, or a point of the side
    top = band[np.lexsort((ys[band], sign * -xs[band]))[0]]
    far = np.lexsort((ys, sign * -xs))[0]  # outermost, then highest
    rows = ys[far] - ys[top]
    if rows < min_rows:
        return None
    slope = (xs[far] - xs[top]) / rows
    if np.sign(slope) != sign or not 0.1 < abs(slope) < 4:
        return None
    return float(xs[top] - slope * ys[top]), float(slope)


def _fit(component: np.ndarray, hull: np.ndarray) -> tuple[str, tuple]:
    """("sector", (apex_x, apex_y, r1, r2, t_left, t_right)) or ("rectangle", ()) or
    ("component", ()) for a component (bool, box-sized, working pixels). The sides are the
    longest slanted edges of the convex hull of the component's outline: dark tissue along
    an edge (a water-filled lumen) bends the outline inwards, never the hull."""
    ys, xs = hull[:, 0], hull[:, 1]
    min_rows = component.shape[0] / 10
    left, right = _side(hull, -1, min_rows), _side(hull, 1, min_rows)
    if left is None or right is None:
        return ("rectangle", ()) if _row_filled(component).mean() >= RECTANGLE else ("component", ())
    (al, bl), (ar, br) = left, right
    apex_y = (ar - al) / (bl - br)
    apex_x = al + bl * apex_y
    if apex_y > ys.min() + component.shape[0] / 4:  # the sides meet inside the fan: not a sector
        return "component", ()
    oy, ox = _edge_points(component)  # the outline, not the hull: an inner arc is concave
    radius = np.hypot(ox - apex_x, oy - apex_y)
    return "sector", (apex_x, apex_y, float(radius.min()), float(radius.max()),
                      float(np.arctan(bl)), float(np.arctan(br)))


def _sector(height: int, width: int, params: tuple) -> np.ndarray:
    """The sector (apex_x, apex_y, r1, r2, left and right angle from straight down) rasterised
    in a height x width box: a pixel is in when its centre is within half a pixel of it."""
    apex_x, apex_y, r1, r2, t_left, t_right = params
    y, x = np.ogrid[0:height, 0:width]
    dx, dy = (x - apex_x).astype(np.float32), (y - apex_y).astype(np.float32)
    radius = np.hypot(dx, dy)
    # signed distances to the two side lines (positive inside)
    inside_l = np.cos(t_left) * dx - np.sin(t_left) * dy >= -0.5
    inside_r = np.sin(t_right) * dy - np.cos(t_right) * dx >= -0.5
    return inside_l & inside_r & (radius >= r1 - 0.5) & (radius <= r2 + 0.5) & (dy > 0)


def _cut_inner_arc(mask: np.ndarray, apex_x: float, apex_y: float, r1: float) -> None:
    """Clear what the hull bridges above the inner arc: only the rows the arc reaches are computed."""
    last = min(mask.shape[0], int(np.floor(apex_y + r1)) + 1)
    if last > 0 and r1 > 0.5:
        y, x = np.ogrid[0:last, 0:mask.shape[1]]
        mask[:last] &= np.hypot(x - apex_x, y - apex_y) >= r1 - 0.5


def _hull(component: np.ndarray) -> np.ndarray | None:
    """The convex hull of a component's outline, (y, x) vertices in order; None when flat."""
    ys, xs = _edge_points(component, columns=False)  # every hull vertex is a row's first or last pixel
    points = np.stack([ys, xs], axis=1)
    try:
        return points[ConvexHull(points).vertices]
    except (QhullError, ValueError):
        return None


def _polygon(vertices: np.ndarray, height: int, width: int) -> np.ndarray:
    """A polygon ((y, x) vertices) filled in a height x width bool array (boundary included)."""
    canvas = Image.new("1", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for y, x in vertices], fill=1, outline=1)
    return np.array(canvas, dtype=bool)


def find(pixels: np.ndarray, lossy: bool = True) -> Fan | None:
    """The fan of a screenshot (uint8 HxW or HxWx3; ``lossy``: decoded from JPEG, or not known
    to be lossless); None when the image has no background border or nothing but background."""
    gray = pixels if pixels.ndim == 2 else pixels.max(axis=2)
    height, width = gray.shape
    if min(height, width) < 3:
        return None
    level = background(gray)
    if level is None:
        return None
    # every step-th pixel: two samples are neighbours only if under `step` pixels lie between
    # them, so text `MAX_STEP` or more pixels from the fan never joins it on the copy
    step = min(MAX_STEP, max(1, -(-max(height, width) // WORK)))
    small = gray[step // 2::step, step // 2::step]
    labels, count = ndimage.label(small > level + (MARGIN_LOSSY if lossy else MARGIN), structure=np.ones((3, 3), bool))
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    objects = ndimage.find_objects(labels)
    # by size and solidity: a fan fills most of its box, a line of text or a caliper does not
    boxes = np.array([(o[0].stop - o[0].start) * (o[1].stop - o[1].start) for o in objects])
    biggest = int(np.argmax(sizes * sizes / boxes)) + 1
    sy, sx = objects[biggest - 1]
    component = labels[sy, sx] == biggest
    # the box in full-size pixels: working pixel i sits at full-size i*step + step//2
    x0, y0 = sx.start * step + step // 2, sy.start * step + step // 2
    x1, y1 = min(width, (sx.stop - 1) * step + step // 2 + 1), min(height, (sy.stop - 1) * step + step // 2 + 1)
    box = (x0, y0, x1, y1)
    hull = _hull(component)
    if hull is None:
        return Fan(box, np.ones((y1 - y0, x1 - x0), bool), "component", False, "the region data.roi=auto found is flat")
    # the hull of the fan never reaches text that is not joined to it; the model, when it
    # explains the hull, cuts what the hull bridges (an inner arc) and is what the check tests
    mask = _polygon(hull * step, y1 - y0, x1 - x0)
    shape, params = _fit(component, hull)
    model = None
    if shape == "sector":
        model = _sector(*component.shape, params)
        _cut_inner_arc(mask, params[0] * step, params[1] * step, params[2] * step)
    elif shape == "rectangle":
        model = np.ones(component.shape, bool)
    known, reason = _check(component, shape, model, _polygon(hull, *component.shape),
                           pixels[y0:y1:step, x0:x1:step])
    return Fan(box, mask, shape, known, reason)


def _row_filled(component: np.ndarray) -> np.ndarray:
    """Each row of ``component`` filled from its first to its last pixel."""
    cols = np.arange(component.shape[1])
    any_ = component.any(axis=1)
    left = np.argmax(component, axis=1)
    right = component.shape[1] - 1 - np.argmax(component[:, ::-1], axis=1)
    return any_[:, None] & (cols >= left[:, None]) & (cols <= right[:, None])


def _check(component: np.ndarray, shape: str, model: np.ndarray | None, hull: np.ndarray,
           region: np.ndarray) -> tuple[bool, str]:
    """Whether the mask is known: a sector or rectangle model explains the component (model and
    hull agree, and nothing is joined on outside the model), and no coloured overlay lies inside
    a gray image. Everything here is on the working copy (``region``: its pixels, box-sized)."""
    if model is None:
        return False, "the region data.roi=auto found is neither a sector nor a rectangle"
    agree = (model & hull).sum() / max(1, (model | hull).sum())
    if agree < MIN_COVER:
        return False, f"the {shape} fitted to the region data.roi=auto found matches only {agree:.0%} of it"
    spill = (component & ~ndimage.binary_dilation(model, iterations=SLACK)).sum()
    if spill > max(4, MAX_SPILL * model.sum()):
        return False, f"{spill} pixels joined to the {shape} (burned-in text touching the image?)"
    if region.ndim == 3:
        sample = region[:hull.shape[0], :hull.shape[1]][hull].astype(np.int16)
        chroma = sample.max(axis=1) - sample.min(axis=1)
        if (chroma > COLOUR).any() and (chroma <= 2).mean() > 0.9:
            return False, "a coloured overlay inside the gray image"
    return True, ""
