"""The region of interest: only the ultrasound image, never the text printed around it.

Where a region comes from, first match wins:

1. a manifest ``roi`` column (``x0 y0 x1 y1``, source pixels, x1 and y1 exclusive), any format;
2. a DICOM Sequence of Ultrasound Regions (0018,6011), unless ``data.roi: none``;
3. ``data.roi: auto``: the largest connected non-background area of the image (a screenshot's
   sector), its bounding box, with every pixel outside that area set to 0;
4. none (``data.roi: none``): the whole image, gistnet's old behaviour.

The crop happens on the decoded source pixels, before the resize, so pixels outside the
region never reach the tensor, and every figure is drawn from the tensor.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from gistnet.config import ROI_MODES as MODES  # noqa: F401 - data.roi's values
from gistnet.errors import DataError

# data.roi: auto treats pixels at or below this gray level as background (screen black).
BACKGROUND_LEVEL = 8


def too_small(width: int, height: int, image_size: int) -> bool:
    """A region is too small when either side is under half of ``data.image_size``: the resize
    would invent more than half of the detail the model sees."""
    return min(width, height) < max(2, (image_size + 1) // 2)


def crop(pixels: np.ndarray, roi: tuple[int, int, int, int], image_size: int, where: str,
         source: str) -> np.ndarray:
    """``pixels[y0:y1, x0:x1]``; DataError naming ``where`` when the region is not inside the
    image or too small for ``image_size``. ``source`` says where the region came from."""
    height, width = pixels.shape[:2]
    x0, y0, x1, y1 = roi
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height or x1 <= x0 or y1 <= y0:
        raise DataError(f"{where}: the {source} region {x0} {y0} {x1} {y1} is not inside the "
                        f"{width}x{height} image")
    if too_small(x1 - x0, y1 - y0, image_size):
        raise DataError(f"{where}: the {source} region {x0} {y0} {x1} {y1} ({x1 - x0}x{y1 - y0}) is too small "
                        f"for data.image_size={image_size} (each side at least {max(2, (image_size + 1) // 2)})")
    return pixels[y0:y1, x0:x1]


def auto(pixels: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """The largest connected non-background area: (its pixels, zero elsewhere, cropped to its
    bounding box; the box). None when the image has no background, or nothing but background."""
    gray = pixels if pixels.ndim == 2 else pixels.max(axis=2)
    foreground = gray > BACKGROUND_LEVEL
    if foreground.all() or not foreground.any():
        return None
    # Join speckle separated by dark pixels, then keep the largest 8-connected component.
    # (Padded first: a closing erodes from the array's edge, and a sector may touch the edge.)
    padded = ndimage.binary_closing(np.pad(foreground, 3), structure=np.ones((3, 3), bool), iterations=2)
    joined = padded[3:-3, 3:-3]
    labels, count = ndimage.label(joined, structure=np.ones((3, 3), bool))
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    component = ndimage.binary_fill_holes(labels == (int(np.argmax(sizes)) + 1))
    ys, xs = np.nonzero(component)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    keep = component[y0:y1, x0:x1]
    region = pixels[y0:y1, x0:x1].copy()
    region[~keep] = 0
    return region, (x0, y0, x1, y1)


def select(pixels: np.ndarray, mode: str, manifest_roi, dicom_roi, image_size: int, where: str) -> np.ndarray:
    """The pixels the model may see, by the rules in this module's docstring."""
    if manifest_roi is not None:
        return crop(pixels, manifest_roi, image_size, where, "manifest roi")
    if mode == "none":
        return pixels
    if dicom_roi is not None:
        return crop(pixels, dicom_roi, image_size, where, "DICOM ultrasound")
    if mode == "auto":
        found = auto(pixels)
        if found is None:
            return pixels
        region, (x0, y0, x1, y1) = found
        whole = (x0, y0, x1, y1) == (0, 0, pixels.shape[1], pixels.shape[0])
        # a region that is the whole image crops nothing: a small image is resized as it always was
        if not whole and too_small(x1 - x0, y1 - y0, image_size):
            raise DataError(f"{where}: the region data.roi=auto found, {x0} {y0} {x1} {y1} ({x1 - x0}x{y1 - y0}), "
                            f"is too small for data.image_size={image_size}; give a manifest roi or data.roi: none")
        return region
    return pixels
