"""Synthetic scanner screenshots for the fan-mask tests: one sector image, many burned-in texts.

``screenshot(...)`` puts a synthetic sector (``synth.render``) on a black or dark-grey screen and
prints fake patient text, calipers and measurement boxes around it (PIL ImageDraw), gray or in
colour, then saves it as a JPEG of the given quality (or PNG). The text never enters a 16x16
block (a JPEG MCU, 4:2:0 or gray 8x8 alike) that comes within ``GAP`` pixels of the fan, so
the fan's JPEG blocks, and hence its decoded pixels, are the same whatever the text says.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from gistnet.data import synth

GAP = 4  # text is at least this many pixels from the fan
BLOCK = 16


def _up(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def fan_image(label: str, index: int, size: int, seed: int = 0) -> np.ndarray:
    """The sector image (size x size, zero outside its fan)."""
    rng = np.random.default_rng([seed, synth.CLASSES.index(label), index])
    return synth.render(synth.sample_lesion(label, rng), size, rng)


def layout(size: int) -> tuple[int, int, int, int]:
    """(screen width, height, sector x0, y0): block-aligned margins with room for text."""
    margin, top = _up(max(32, size // 3)), _up(max(32, size // 3))
    return _up(size) + 2 * margin, top + _up(size) + margin, margin, top


def screenshot(sector: np.ndarray, text_seed: int, background: int = 0, colour: bool = False,
               quality: int | None = 85, overlays: bool = True) -> tuple[bytes, np.ndarray]:
    """(encoded screen, the fan's mask on the screen). ``text_seed`` chooses the text and its
    places; everything else is the same for the same arguments."""
    size = sector.shape[0]
    width, height, x0, y0 = layout(size)
    fan = np.zeros((height, width), bool)
    fan[y0:y0 + size, x0:x0 + size] = sector > 0
    screen = np.full((height, width), background, np.uint8)
    screen[fan] = sector[sector > 0]
    # blocks the text may use: none within GAP pixels of the fan
    near = ndimage.binary_dilation(fan, iterations=GAP)
    blocked = near.reshape(height // BLOCK, BLOCK, width // BLOCK, BLOCK).any(axis=(1, 3))
    allowed = ~np.repeat(np.repeat(blocked, BLOCK, axis=0), BLOCK, axis=1)
    rng = np.random.default_rng(text_seed)
    layer = Image.new("RGB", (width, height), (0, 0, 0))
    ink = Image.new("L", (width, height), 0)
    draw, inked = ImageDraw.Draw(layer), ImageDraw.Draw(ink)
    font = ImageFont.load_default(size=int(rng.integers(8, 14)))

    def colour_of():
        if colour:
            return tuple(int(v) for v in rng.integers(60, 256, 3))
        g = int(rng.integers(120, 256))
        return (g, g, g)

    for _ in range(int(rng.integers(4, 9))):
        text = "".join(rng.choice(list("ABCDEFGHJKLMNPRSTUVWXYZ0123456789/.: -"), int(rng.integers(5, 20))))
        xy = (int(rng.integers(0, width - 20)), int(rng.integers(0, height - 10)))
        fill = colour_of()
        draw.text(xy, text, fill=fill, font=font)
        inked.text(xy, text, fill=255, font=font)
    if overlays:
        for _ in range(int(rng.integers(2, 5))):  # calipers (+) and measurement boxes
            cx, cy = int(rng.integers(4, width - 4)), int(rng.integers(4, height - 4))
            fill = colour_of()
            for d in (draw, inked):
                shade = fill if d is draw else 255
                d.line((cx - 3, cy, cx + 3, cy), fill=shade)
                d.line((cx, cy - 3, cx, cy + 3), fill=shade)
            bx, by = int(rng.integers(0, width - 30)), int(rng.integers(0, height - 14))
            for d in (draw, inked):
                d.rectangle((bx, by, bx + 28, by + 12), outline=fill if d is draw else 255)
    paint = (np.asarray(ink) > 0) & allowed
    rgb = np.repeat(screen[..., None], 3, axis=2)
    rgb[paint] = np.asarray(layer)[paint]
    image = Image.fromarray(rgb, "RGB") if colour else Image.fromarray(rgb[..., 0], "L")
    buf = io.BytesIO()
    if quality is None:
        image.save(buf, format="PNG")
    else:
        image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), fan
