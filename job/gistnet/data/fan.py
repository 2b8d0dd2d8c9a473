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
polygon fill (Pillow) and, for a sector with an inner arc, the rows that arc reaches. All of
it but the checks in the last paragraph depends only on the component's outline (its box and
its rows' and columns' first and last pixels), and the screens of an archive have a handful of
outlines: ``Outlines`` keeps the geometry of each and reuses it for a screen whose foreground
proves the same outline, so an image that hits costs a threshold and a few array comparisons
on the copy (no labelling, fitting or rasterising) and gets the same result.
"""

from __future__ import annotations

import threading
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
EIGHT = np.ones((3, 3), bool)  # 8-connectivity
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
    return _background(_ring(gray))


def _background(ring: np.ndarray) -> int | None:
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


def _ring(pixels: np.ndarray) -> np.ndarray:
    """The gray levels (a colour pixel's brightest channel) of the image's outer ring."""
    ring = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    return ring if pixels.ndim == 2 else _brightest(ring)


@dataclass(frozen=True)
class _Geometry:
    """Everything ``find`` derives from the fan's component but its pixel-level checks (spill,
    colour): a function of the component's box and its rows' and columns' first and last pixels
    (its outline) alone, so every screen whose component has that outline shares it."""

    sy: slice  # the component's box on the working copy
    sx: slice
    box: tuple[int, int, int, int]  # ... in full-size pixels
    mask: np.ndarray  # bool, box-sized, read-only: shared by every Fan with this outline
    shape: str
    model: np.ndarray | None  # the sector or rectangle on the working copy, box-sized
    grown: np.ndarray | None  # the model dilated by SLACK (what a component may fill)
    hull: np.ndarray | None  # the hull polygon on the working copy, box-sized (None: flat)
    agree: float  # intersection over union of model and hull
    spill: float  # how many of the component's pixels may lie beyond ``grown`` (text joined on, if more)
    # what a screen's foreground must show for its component to have this outline (Outlines.match)
    outline: np.ndarray  # box-sized: pixels between their row's and their column's first and last
    ends: np.ndarray  # flat indices (in the box) of every row's and column's first and last pixel
    ring: np.ndarray  # flat indices (in the working copy) of the pixels 8-adjacent to the outline
    filled: int  # the outline's pixels when it is one 8-connected piece, else -1


def _geometry(component: np.ndarray, sy: slice, sx: slice, step: int, height: int, width: int) -> _Geometry:
    """The geometry of a component (bool, box-sized) found at (sy, sx) on a copy sampled every
    ``step``-th pixel of a height x width screen."""
    # the box in full-size pixels: working pixel i sits at full-size i*step + step//2
    x0, y0 = sx.start * step + step // 2, sy.start * step + step // 2
    x1, y1 = min(width, (sx.stop - 1) * step + step // 2 + 1), min(height, (sy.stop - 1) * step + step // 2 + 1)
    hull = _hull(component)
    model = grown = polygon = None
    agree = spill = 0.0
    if hull is None:
        mask, shape = np.ones((y1 - y0, x1 - x0), bool), "component"
    else:
        # the hull of the fan never reaches text that is not joined to it; the model, when it
        # explains the hull, cuts what the hull bridges (an inner arc) and is what the check tests
        mask = _polygon(hull * step, y1 - y0, x1 - x0)
        shape, params = _fit(component, hull)
        if shape == "sector":
            model = _sector(*component.shape, params)
            _cut_inner_arc(mask, params[0] * step, params[1] * step, params[2] * step)
        elif shape == "rectangle":
            model = np.ones(component.shape, bool)
        polygon = _polygon(hull, *component.shape)
        if model is not None:
            agree = (model & polygon).sum() / max(1, (model | polygon).sum())
            grown = ndimage.binary_dilation(model, iterations=SLACK)
            spill = max(4, MAX_SPILL * model.sum())
    mask.flags.writeable = False
    rows, cols = np.arange(component.shape[0]), np.arange(component.shape[1])
    left, right = np.argmax(component, axis=1), component.shape[1] - 1 - np.argmax(component[:, ::-1], axis=1)
    top, bottom = np.argmax(component, axis=0), component.shape[0] - 1 - np.argmax(component[::-1], axis=0)
    outline = ((cols >= left[:, None]) & (cols <= right[:, None]) & (rows[:, None] >= top) & (rows[:, None] <= bottom))
    ends = np.unique(np.concatenate([rows * component.shape[1] + left, rows * component.shape[1] + right,
                                     top * component.shape[1] + cols, bottom * component.shape[1] + cols]))
    # the outline's 8-neighbours on the working copy (a one-pixel frame around the box, clipped)
    frame = np.zeros((component.shape[0] + 2, component.shape[1] + 2), bool)
    frame[1:-1, 1:-1] = outline
    frame = ndimage.binary_dilation(frame, structure=EIGHT) & ~frame
    ys, xs = np.nonzero(frame)
    ys, xs = ys + sy.start - 1, xs + sx.start - 1
    small_h, small_w = len(range(step // 2, height, step)), len(range(step // 2, width, step))
    inside = (ys >= 0) & (xs >= 0) & (ys < small_h) & (xs < small_w)
    filled = int(np.count_nonzero(outline)) if ndimage.label(outline, structure=EIGHT)[1] == 1 else -1
    return _Geometry(sy, sx, (x0, y0, x1, y1), mask, shape, model, grown, polygon, float(agree), float(spill),
                     outline, ends, ys[inside] * small_w + xs[inside], filled)


def _brightest(colours: np.ndarray) -> np.ndarray:
    """Each colour's brightest channel (``max(axis=-1)``, channel by channel: faster)."""
    return np.maximum(np.maximum(colours[..., 0], colours[..., 1]), colours[..., 2])


def _rooted(component: np.ndarray) -> bool:
    """Whether every row run of ``component`` below its first row touches (8-connected) a run of
    the row above, and its first row is one run: then it is one 8-connected piece."""
    above = np.zeros_like(component)
    above[1:] = component[:-1]
    near = above.copy()
    near[:, 1:] |= above[:, :-1]
    near[:, :-1] |= above[:, 1:]
    starts = component.copy()
    starts[:, 1:] &= ~component[:, :-1]
    run = np.cumsum(starts.ravel(), dtype=np.int32)  # each pixel's run, 1-based
    runs = int(run[-1])
    parented = np.count_nonzero(np.bincount(run[(component & near).ravel()], minlength=runs + 1))
    return runs - parented == 1


class Outlines:
    """The geometries found so far, per screen size: a screen whose foreground (on the working
    copy) gives its fan component the outline of one of them reuses it, so ``find`` labels,
    fits and rasterises once per distinct screen geometry (an archive has a handful).

    A hit returns exactly what the full computation would: ``match`` accepts a geometry only
    when the foreground proves that the component ``find`` would choose has that outline (every
    first and last pixel of its rows and columns in the foreground, none of the outline's
    neighbours, all of those ends in one 8-connected piece of the foreground inside the outline,
    and that piece so large that no other component can outscore it); what depends on the
    pixels inside (text joined on, a coloured overlay) is checked on every image. So the cache
    changes no result, whichever image filled it (tests/data/test_fan.py compares the two).
    Thread-safe; bounded (``PER_SIZE`` geometries for each of ``SIZES`` screen sizes, newest
    first)."""

    PER_SIZE = 8
    SIZES = 32

    def __init__(self) -> None:
        self._by_size: dict[tuple[int, int, int], tuple[_Geometry, ...]] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def lookup(self, key: tuple[int, int, int], foreground: np.ndarray) -> tuple[_Geometry, np.ndarray] | None:
        """(a geometry, the component: bool, box-sized) when one of this size's geometries matches."""
        for geometry in self._by_size.get(key, ()):
            component = self.match(geometry, foreground)
            if component is not None:
                with self._lock:
                    self.hits += 1
                return geometry, component
        with self._lock:
            self.misses += 1
        return None

    @staticmethod
    def match(geometry: _Geometry, foreground: np.ndarray) -> np.ndarray | None:
        """The component ``find`` would choose in ``foreground`` (the working copy's) when it has
        ``geometry``'s outline, else None."""
        inner = foreground[geometry.sy, geometry.sx]
        if not inner.ravel()[geometry.ends].all() or foreground.ravel()[geometry.ring].any():
            return None
        # the foreground in the outline, with none of its neighbours outside it: whole components
        component = inner & geometry.outline
        size = int(np.count_nonzero(component))
        if size != geometry.filled and not (_rooted(component) or _rooted(component[::-1])):
            # holes, maybe around islands (other components): the piece that holds every end
            labels = ndimage.label(component, structure=EIGHT)[0]
            piece = labels.ravel()[geometry.ends]
            if piece[0] == 0 or (piece != piece[0]).any():
                return None
            component = labels == piece[0]
            size = int(np.count_nonzero(component))
        # ... every other component scores (size^2 / box) at most its own size: under this one's
        others = int(np.count_nonzero(foreground)) - size
        if others * inner.size >= size * size:
            return None
        return component

    def store(self, key: tuple[int, int, int], geometry: _Geometry) -> None:
        with self._lock:
            kept = self._by_size.pop(key, ())
            self._by_size[key] = (geometry, *kept)[:self.PER_SIZE]
            while len(self._by_size) > self.SIZES:
                del self._by_size[next(iter(self._by_size))]

    def clear(self) -> None:
        with self._lock:
            self._by_size.clear()
            self.hits = self.misses = 0


CACHE = Outlines()  # find's, shared by the loader's decoding threads


def find(pixels: np.ndarray, lossy: bool = True, cache: Outlines | None = CACHE) -> Fan | None:
    """The fan of a screenshot (uint8 HxW or HxWx3; ``lossy``: decoded from JPEG, or not known
    to be lossless); None when the image has no background border or nothing but background.
    ``cache``: reuse the geometry of a screen with the same outline (``Outlines``: the same
    result); None: compute everything."""
    height, width = pixels.shape[:2]
    if min(height, width) < 3:
        return None
    level = _background(_ring(pixels))
    if level is None:
        return None
    # every step-th pixel: two samples are neighbours only if under `step` pixels lie between
    # them, so text `MAX_STEP` or more pixels from the fan never joins it on the copy
    step = min(MAX_STEP, max(1, -(-max(height, width) // WORK)))
    small = pixels[step // 2::step, step // 2::step]
    foreground = (small if small.ndim == 2 else _brightest(small)) > level + (MARGIN_LOSSY if lossy else MARGIN)
    key = (height, width, step)
    found = cache.lookup(key, foreground) if cache is not None else None
    if found is None:
        labels, count = ndimage.label(foreground, structure=EIGHT)
        if count == 0:
            return None
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        objects = ndimage.find_objects(labels)
        # by size and solidity: a fan fills most of its box, a line of text or a caliper does not
        boxes = np.array([(o[0].stop - o[0].start) * (o[1].stop - o[1].start) for o in objects])
        biggest = int(np.argmax(sizes * sizes / boxes)) + 1
        sy, sx = objects[biggest - 1]
        component = labels[sy, sx] == biggest
        geometry = _geometry(component, sy, sx, step, height, width)
        if cache is not None:
            cache.store(key, geometry)
    else:
        geometry, component = found
    x0, y0, x1, y1 = geometry.box
    known, reason = _check(component, geometry, pixels[y0:y1:step, x0:x1:step])
    return Fan(geometry.box, geometry.mask, geometry.shape, known, reason)


def _row_filled(component: np.ndarray) -> np.ndarray:
    """Each row of ``component`` filled from its first to its last pixel."""
    cols = np.arange(component.shape[1])
    any_ = component.any(axis=1)
    left = np.argmax(component, axis=1)
    right = component.shape[1] - 1 - np.argmax(component[:, ::-1], axis=1)
    return any_[:, None] & (cols >= left[:, None]) & (cols <= right[:, None])


def _check(component: np.ndarray, geometry: _Geometry, region: np.ndarray) -> tuple[bool, str]:
    """Whether the mask is known: a sector or rectangle model explains the component (model and
    hull agree, and nothing is joined on outside the model), and no coloured overlay lies inside
    a gray image. Everything here is on the working copy (``region``: its pixels, box-sized)."""
    shape, model, hull = geometry.shape, geometry.model, geometry.hull
    if hull is None:
        return False, "the region data.roi=auto found is flat"
    if model is None:
        return False, "the region data.roi=auto found is neither a sector nor a rectangle"
    agree = geometry.agree
    if agree < MIN_COVER:
        return False, f"the {shape} fitted to the region data.roi=auto found matches only {agree:.0%} of it"
    spill = int(np.count_nonzero(component & ~geometry.grown))
    if spill > geometry.spill:
        return False, f"{spill} pixels joined to the {shape} (burned-in text touching the image?)"
    if region.ndim == 3:
        sample = region[:hull.shape[0], :hull.shape[1]][hull].astype(np.int16)
        chroma = _brightest(sample) - np.minimum(np.minimum(sample[:, 0], sample[:, 1]), sample[:, 2])
        if (chroma > COLOUR).any() and (chroma <= 2).mean() > 0.9:
            return False, "a coloured overlay inside the gray image"
    return True, ""
