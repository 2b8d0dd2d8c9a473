"""The region of interest: only the ultrasound image, never the text printed around it.

Where a region comes from, first match wins:

1. a manifest ``roi`` column (``x0 y0 x1 y1``, source pixels, x1 and y1 exclusive), any format;
2. a DICOM Sequence of Ultrasound Regions (0018,6011), unless ``data.roi: none``;
3. ``data.roi: auto``: the screenshot's fan (``fan.find``: the sector fitted to the image found
   on the screen, or a rectangle), its box, with every pixel outside the fan set to 0;
4. none (``data.roi: none``): the whole image, gistnet's old behaviour.

The crop happens on the decoded source pixels, before the resize, so pixels outside the
region never reach the tensor, and every figure is drawn from the tensor. A figure of patient
pixels is published only when every image's mask is *known*: a manifest roi, a DICOM region, or
a fan ``fan.find`` could check (``Selection.known``); ``withheld`` says why it is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gistnet.config import ROI_MODES as MODES  # noqa: F401 - data.roi's values
from gistnet.data import fan
from gistnet.errors import DataError


@dataclass
class Selection:
    """The pixels the model may see, and whether the mask that cut them is known (figures may
    show them); ``reason`` says why not."""

    pixels: np.ndarray
    known: bool
    reason: str = ""


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


def auto(pixels: np.ndarray, lossy: bool = True) -> tuple[np.ndarray, tuple[int, int, int, int], fan.Fan] | None:
    """The fan of a screenshot (``fan.find``): (its pixels, zero outside the fan, cropped to its
    box; the box; the fan). None when the image has no background border, or nothing but
    background."""
    found = fan.find(pixels, lossy)
    if found is None:
        return None
    x0, y0, x1, y1 = found.box
    mask = found.mask if pixels.ndim == 2 else found.mask[..., None]
    return pixels[y0:y1, x0:x1] * mask, found.box, found  # uint8 times bool: a new uint8 array


def select(pixels: np.ndarray, mode: str, manifest_roi, dicom_roi, image_size: int, where: str,
           lossy: bool = True) -> Selection:
    """The pixels the model may see, by the rules in this module's docstring (``lossy``: the
    pixels were decoded from JPEG, or are not known to be lossless: ``fan.find``)."""
    if manifest_roi is not None:
        return Selection(crop(pixels, manifest_roi, image_size, where, "manifest roi"), True)
    if mode == "none":
        return Selection(pixels, False, "data.roi: none uses whole images")
    if dicom_roi is not None:
        return Selection(crop(pixels, dicom_roi, image_size, where, "DICOM ultrasound"), True)
    if mode == "auto":
        found = auto(pixels, lossy)
        if found is None:
            return Selection(pixels, False, "an image without a background border is used whole, unmasked")
        region, (x0, y0, x1, y1), fanned = found
        whole = x1 - x0 >= pixels.shape[1] - 2 and y1 - y0 >= pixels.shape[0] - 2
        # a region (nearly) the whole image crops nothing: a small image is resized as it always was
        if not whole and too_small(x1 - x0, y1 - y0, image_size):
            raise DataError(f"{where}: the region data.roi=auto found, {x0} {y0} {x1} {y1} ({x1 - x0}x{y1 - y0}), "
                            f"is too small for data.image_size={image_size}; give a manifest roi or data.roi: none")
        return Selection(region, fanned.known, fanned.reason)
    return Selection(pixels, False, "an image without a DICOM region is used whole (data.roi: dicom)")


def withheld(known: list[bool], reasons: list[str]) -> str:
    """Why figures of patient pixels are withheld ("" when every image's mask is known)."""
    unknown = [r for k, r in zip(known, reasons) if not k]
    if not unknown:
        return ""
    first = next((r for r in unknown if r), "no known mask")
    return (f"{len(unknown)} of {len(known)} images have no known mask (a manifest roi, a DICOM ultrasound "
            f"region, or a fan data.roi=auto could check), e.g. {first}: figures made from image pixels "
            "are withheld")
