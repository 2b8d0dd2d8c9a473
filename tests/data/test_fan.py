"""The fan mask (data/fan.py): burned-in text around the fan never reaches the model's input."""

import io

import numpy as np
import pytest
from gistnet.data import dataset, fan, region
from PIL import Image, ImageDraw
from scipy import ndimage

from tests.data.screens import fan_image, layout, screenshot


@pytest.mark.parametrize("background", [0, 12])
@pytest.mark.parametrize("colour", [False, True])
@pytest.mark.parametrize("quality", [75, 92])
def test_screens_with_different_text_give_identical_model_inputs(background, colour, quality):
    """Issue 29's acceptance at the input: the same sector on the same screen with different
    text, calipers and measurement boxes outside the fan (4 px or more from it, in JPEG blocks
    of its own) loads to the same pixels; with data.roi: none it does not (so this can fail)."""
    for label, index, size in (("GIST", 0, 96), ("LM", 1, 160)):
        sector = fan_image(label, index, size)
        screens = [screenshot(sector, seed, background, colour, quality)[0] for seed in range(3)]
        inputs = [dataset.decode_item(data, 32, 10**8, "auto").pixels for data in screens]
        assert all(np.array_equal(inputs[0], other) for other in inputs[1:])
        whole = [dataset.decode_item(data, 32, 10**8, "none").pixels for data in screens]
        assert not np.array_equal(whole[0], whole[1])


def test_a_dark_grey_screen_is_masked_not_used_whole():
    sector = fan_image("GIST", 2, 128)
    data, truth = screenshot(sector, 5, background=12, quality=85)
    pixels = np.asarray(Image.open(io.BytesIO(data)))
    assert fan.background(pixels) == 12
    found = fan.find(pixels)
    width, height, x0, y0 = layout(128)
    assert found is not None and found.box != (0, 0, width, height)
    mask = np.zeros_like(truth)
    bx0, by0, bx1, by1 = found.box
    mask[by0:by1, bx0:bx1] = found.mask
    assert not (mask & ~ndimage.binary_dilation(truth, iterations=2)).any()  # nothing beyond the fan's edge


def _sector(height, width, apex, r1, r2, left, right):
    """A sector as SlicerUltrasound describes one: apex, inner and outer radius, two angles
    (radians from straight down, left negative)."""
    y, x = np.mgrid[0:height, 0:width]
    dx, dy = x - apex[0], y - apex[1]
    angle, radius = np.arctan2(dx, dy), np.hypot(dx, dy)
    return (angle >= left) & (angle <= right) & (radius >= r1) & (radius <= r2)


@pytest.mark.parametrize("apex, r1, r2, left, right", [
    ((150, -20), 40, 200, -0.7, 0.7),  # apex above the screen, clipped by its top
    ((150, 30), 25, 160, -0.9, 0.6),  # apex on the screen, an inner arc, asymmetric
])
def test_the_fitted_sector_is_the_drawn_one(apex, r1, r2, left, right):
    truth = _sector(240, 300, apex, r1, r2, left, right)
    rng = np.random.default_rng(0)
    pixels = np.where(truth, rng.integers(40, 220, truth.shape), 0).astype(np.uint8)
    found = fan.find(pixels)
    assert found.shape == "sector" and found.known, found.reason
    mask = np.zeros_like(truth)
    x0, y0, x1, y1 = found.box
    mask[y0:y1, x0:x1] = found.mask
    assert (mask & truth).sum() / (mask | truth).sum() > 0.97
    assert not (mask & ~ndimage.binary_dilation(truth)).any()  # never more than a pixel outside


def test_text_joined_to_the_fan_is_not_a_known_mask():
    truth = _sector(240, 300, (150, -20), 40, 200, -0.7, 0.7)
    pixels = np.where(truth, 120, 0).astype(np.uint8)
    canvas = Image.fromarray(pixels)
    ImageDraw.Draw(canvas).rectangle((50, 35, 100, 45), fill=255)  # a label box touching the fan's left edge
    found = fan.find(np.asarray(canvas))
    assert not found.known and found.reason
    assert region.withheld([True, found.known], ["", found.reason]).startswith(
        "1 of 2 images have no known mask")


def test_a_linear_probes_rectangle_is_its_box_and_a_clean_crop_is_not_known():
    screen = np.zeros((120, 128), np.uint8)
    screen[20:100, 40:120] = np.random.default_rng(1).integers(30, 200, (80, 80))
    selection = region.select(screen, "auto", None, None, 32, "x.png")
    assert selection.known and selection.pixels.shape == (80, 80)
    whole = region.select(np.full((60, 60), 90, np.uint8), "auto", None, None, 32, "x.png")
    assert not whole.known and "without a background border" in whole.reason
    assert not region.select(screen, "none", None, None, 32, "x.png").known
    assert region.select(screen, "none", (40, 20, 120, 100), None, 32, "x.png").known  # a manifest roi
    assert region.withheld([True, True], ["", ""]) == ""


def test_dark_lossless_sectors_are_found_whole(tmp_path):
    """Dark sites' 32 px PNG sectors (site-C: gain 0.85, gamma 1.35): a lossless image needs no
    margin for JPEG ringing, so the fan does not break into pieces too small to use."""
    from gistnet.data import synth
    from gistnet.data.storage import LocalStore

    synth.write_sites(LocalStore(tmp_path), synth.sites(5, 0), 20, 32, 0)
    decoded = [dataset.decode_item(p.read_bytes(), 32, 10**8, "auto", where=p.name) for p in tmp_path.rglob("*.png")]
    assert len(decoded) == 100 and sum(d.mask_known for d in decoded) >= 95


def _same(cached, full) -> bool:
    """Two finds give the same result: box, mask, model, known and reason."""
    if cached is None or full is None:
        return cached is full
    return (cached.box, cached.shape, cached.known, cached.reason) == (full.box, full.shape, full.known, full.reason) \
        and np.array_equal(cached.mask, full.mask)


def test_a_cached_fan_is_exactly_the_full_computation_on_the_test_screens():
    """The loader's fast path (fan.Outlines: one geometry per screen outline, reused) gives the
    same box, mask, model and known/reason as computing everything, on every screen of
    tests/data/screens.py: black and dark grey, gray and colour text, JPEG 75 and 92, PNG."""
    cache = fan.Outlines()
    count = 0
    for label, index, size in (("GIST", 0, 96), ("LM", 1, 160)):
        sector = fan_image(label, index, size)
        for background in (0, 12):
            for colour in (False, True):
                for quality in (75, 92, None):
                    for seed in range(3):
                        data, _ = screenshot(sector, seed, background, colour, quality)
                        pixels = np.asarray(Image.open(io.BytesIO(data)))
                        found = fan.find(pixels, quality is not None, cache=cache)
                        assert _same(found, fan.find(pixels, quality is not None, cache=None))
                        assert found is not None and not found.mask.flags.writeable  # a shared mask: read-only
                        count += 1
    assert cache.hits + cache.misses == count and cache.hits >= count // 2  # the fast path did most of them


def test_the_cache_never_returns_the_mask_of_another_screen():
    """Screens of one size and background whose fans differ (a column cut off, a dark band
    splitting it, text joined on) get their own mask; a fan with the same outline (other
    tissue, a dark ring around an island of tissue) reuses the geometry, with the same result."""
    truth = _sector(240, 300, (150, -20), 40, 200, -0.7, 0.7)

    def screen(seed: int) -> np.ndarray:
        return np.where(truth, np.random.default_rng(seed).integers(40, 220, truth.shape), 0).astype(np.uint8)

    y, x = np.mgrid[0:240, 0:300]
    ring = (np.hypot(x - 150, y - 120) >= 20) & (np.hypot(x - 150, y - 120) < 30)
    band, cut, joined = screen(4), screen(5), Image.fromarray(screen(6))
    band[110:122] = 0  # the fan in two pieces
    cut[:, :60] = 0  # its left tip cut off
    ImageDraw.Draw(joined).rectangle((50, 35, 100, 45), fill=255)  # a label box touching the fan
    cases = [("first", screen(1), True), ("other tissue", screen(2), True),
             ("an island in a dark ring", np.where(ring, 0, screen(3)).astype(np.uint8), True),
             ("split by a band", band, False), ("cut", cut, False), ("text joined", np.asarray(joined), False)]
    cache = fan.Outlines()
    first = None
    for name, pixels, same_outline in cases:
        hits = cache.hits
        found = fan.find(pixels, lossy=False, cache=cache)
        assert _same(found, fan.find(pixels, lossy=False, cache=None)), name
        first = first or found
        if name != "first":
            assert (cache.hits > hits) == same_outline, name
            assert (found.box == first.box and np.array_equal(found.mask, first.mask)) == same_outline, name


def test_the_cache_matches_the_full_computation_on_random_shapes():
    """Differential: random components (on a screen under 128 px the working copy is the screen
    itself), then screens with the same outline but holes, islands, pieces split off, and other
    components beside it, some larger: the cached find equals the full one on every screen."""
    rng = np.random.default_rng(29)
    hits = misses = 0
    for _ in range(150):
        blob = np.zeros((24, 24), bool)
        blob[3:21, 3:21] = ndimage.binary_opening(rng.random((18, 18)) < 0.75)
        labels, count = ndimage.label(blob, structure=np.ones((3, 3), bool))
        if count == 0:
            continue
        base = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
        cache = fan.Outlines()
        fan.find(np.where(base, 100, 0).astype(np.uint8), lossy=False, cache=cache)
        for _ in range(6):
            screen = base & (rng.random(base.shape) < rng.choice([0.7, 0.9, 1.0]))
            if rng.random() < 0.7:  # every row's and column's first and last pixel kept: the same outline
                rows, cols = np.nonzero(base.any(axis=1))[0], np.nonzero(base.any(axis=0))[0]
                screen[rows, np.argmax(base[rows], axis=1)] = screen[rows, 23 - np.argmax(base[rows, ::-1], axis=1)] = True
                screen[np.argmax(base[:, cols], axis=0), cols] = screen[23 - np.argmax(base[::-1, cols], axis=0), cols] = True
            if rng.random() < 0.3:  # another component, maybe larger, in a free corner
                screen[21:23, 0:rng.integers(2, 24)] = True
            pixels = np.where(screen, 100, 0).astype(np.uint8)
            before = cache.hits
            assert _same(fan.find(pixels, lossy=False, cache=cache), fan.find(pixels, lossy=False, cache=None))
            hits, misses = hits + (cache.hits > before), misses + (cache.hits == before)
    assert hits >= 50 and misses >= 50  # both paths taken
