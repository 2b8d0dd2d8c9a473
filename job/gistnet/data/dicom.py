"""DICOM objects in: pixels, the ultrasound region and a patient id for grouping, nothing else.

A ``.dcm`` object is recognised by content (the ``DICM`` marker after the 128-byte preamble),
whatever its name. pydicom reads it; compressed pixel data is decoded by the decoders pydicom
finds installed, here only licence-compatible ones: Pillow (HPND) for JPEG Baseline and JPEG
2000, pydicom itself (MIT) for RLE. Anything else (JPEG Lossless, JPEG-LS, deflated or
encrypted data) is not decoded: the object is skipped and listed with the reason and its
transfer syntax UID.

What leaves this module: the decoded frame as 8-bit gray or RGB, the bounds of the largest 2D tissue
region of the Sequence of Ultrasound Regions (never a Doppler strip or trace beside it),
the PatientID (only ever used through ``privacy.Pseudonymizer``), and the pixel-description
attributes of ``PIXEL_ATTRIBUTES``. No other header value is returned, logged or put in an
exception message.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

# The header attributes gistnet reads besides the PatientID: they describe an encoding, not a person.
PIXEL_ATTRIBUTES = ("Rows", "Columns", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
                    "SamplesPerPixel", "NumberOfFrames", "SOPClassUID", "TransferSyntaxUID",
                    "RegionSpatialFormat", "RegionDataType")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420")
GRAY = ("MONOCHROME1", "MONOCHROME2")
# (0018,6014) Region Data Type, PS3.3 C.8.5.5.1.2; (0018,6012) Region Spatial Format 1 is 2D.
DATA_TYPES = {0: "none", 1: "tissue", 2: "color flow", 3: "PW spectral Doppler", 4: "CW spectral Doppler",
              5: "Doppler mean trace", 6: "Doppler mode trace", 7: "Doppler max trace", 8: "volume trace",
              9: "d(volume)/dt trace", 10: "ECG trace", 11: "pulse trace", 12: "phonocardiogram trace",
              13: "gray bar", 14: "color bar", 15: "integrated backscatter", 16: "area trace",
              17: "d(area)/dt", 18: "other physiological input"}
TISSUE, SPATIAL_2D = 1, 1


def is_dicom(data: bytes) -> bool:
    """Part 10 file: a 128-byte preamble then ``DICM``."""
    return len(data) >= 132 and data[128:132] == b"DICM"


@dataclass
class DicomImage:
    pixels: np.ndarray  # uint8, HxW (gray) or HxWx3 (RGB)
    region: tuple[int, int, int, int] | None  # x0, y0, x1, y1 (exclusive) from (0018,6011)
    patient_id: str  # raw PatientID ("" when absent): pseudonymize before it goes anywhere
    frames: int
    frame: int
    tissue_regions: int = 0  # 2D tissue regions in (0018,6011); ``region`` is the largest
    no_tissue: str = ""  # why (0018,6011) gives no region: it lists only other kinds ("" when it has one or is absent)


class Undecodable(ValueError):
    """The object is DICOM but its pixels cannot be used: the message says why, with the
    transfer syntax UID, and carries no other header value."""


def _syntax(ds) -> str:
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is None:
        return "transfer syntax (none in the file meta)"
    name = uid.name if uid.is_transfer_syntax else "unknown"
    return f"transfer syntax {uid} ({name})"


def read(data: bytes, max_pixels: int, frame: int | None = None, where: str = "") -> DicomImage:
    """Decode one frame (``frame``, else the first) of a DICOM object to 8 bits.

    Raises ``Undecodable`` (skip and list) for pixels that cannot be decoded, and ``IndexError``
    (a data error for the caller) when ``frame`` is not in the object."""
    import pydicom
    from pydicom import pixels as px

    # pydicom's warnings about malformed values quote the value (a name, a birth date): never emit them.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on a damaged file
        raise Undecodable(f"corrupt DICOM header ({type(exc).__name__})") from None
    syntax = _syntax(ds)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise Undecodable(f"DICOM without pixel data, {syntax}")
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise Undecodable(f"DICOM float pixel data is not an image gistnet reads, {syntax}")
    uid = ds.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else None
    if uid is not None:
        try:
            available = px.get_decoder(uid).is_available
        except (NotImplementedError, ValueError):
            available = False
        if not available:
            raise Undecodable(f"no licence-compatible decoder for the DICOM {syntax}")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows * columns > max_pixels:
        raise ValueError(f"image of {columns}x{rows} pixels exceeds data.max_image_pixels={max_pixels}")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in COLOUR + GRAY:
        raise Undecodable(f"DICOM photometric interpretation {photometric!r} is not one gistnet reads, {syntax}")
    index = 0 if frame is None else frame
    if index >= frames:
        raise IndexError(f"frame {index} is out of range: the DICOM has {frames} frame(s) (0..{frames - 1})")
    try:
        arr = px.pixel_array(ds, index=index if frames > 1 else None)  # YBR_* converted to RGB
    except Exception as exc:  # noqa: BLE001 - decoders raise many kinds; no header value in the message
        raise Undecodable(f"DICOM pixel data could not be decoded ({type(exc).__name__}), {syntax}") from None
    pixels = _to_8bit(arr, photometric, int(ds.get("BitsStored", 8) or 8), int(ds.get("PixelRepresentation", 0) or 0))
    box, tissue, no_tissue = _us_region(ds)
    return DicomImage(pixels, box, str(ds.get("PatientID", "") or ""), frames, index, tissue, no_tissue)


def _to_8bit(arr: np.ndarray, photometric: str, bits_stored: int, signed: int) -> np.ndarray:
    """MONOCHROME1 inverted; 8-bit kept; wider data stretched over its used range (the rule
    ``dataset`` applies to 16-bit PNGs)."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if photometric == "MONOCHROME1":
        if signed:
            arr = arr.max() + arr.min() - arr.astype(np.int64)
        else:
            arr = (1 << bits_stored) - 1 - arr.astype(np.int64)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if bits_stored <= 8 and not signed and arr.min() >= 0 and arr.max() <= 255:
        return arr.astype(np.uint8)
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
    return arr.astype(np.uint8)  # truncated, exactly as the 16-bit PNG rule


def _us_region(ds) -> tuple[tuple[int, int, int, int] | None, int, str]:
    """The Sequence of Ultrasound Regions (0018,6011): (the largest 2D tissue region as x0, y0, x1, y1
    with x1, y1 exclusive (the attributes' max values are inclusive), how many 2D tissue regions
    there are, why there is none ("" when there is one or the sequence is absent)). A spectral
    Doppler trace, an M-mode strip or a colour bar is never the image the model sees."""
    regions = ds.get("SequenceOfUltrasoundRegions")
    if not regions:
        return None, 0, ""
    best, area, count, kinds = None, -1, 0, []
    for item in regions:
        data_type, spatial = item.get("RegionDataType"), item.get("RegionSpatialFormat")
        if data_type != TISSUE or spatial not in (None, SPATIAL_2D):
            kinds.append("no data type" if data_type is None else f"tissue in spatial format {spatial}"
                         if data_type == TISSUE else DATA_TYPES.get(data_type, f"data type {data_type}"))
            continue
        try:
            x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
            x1, y1 = int(item.RegionLocationMaxX1) + 1, int(item.RegionLocationMaxY1) + 1
        except (AttributeError, TypeError, ValueError):
            kinds.append("tissue without its location")
            continue
        count += 1
        if (x1 - x0) * (y1 - y0) > area:
            best, area = (x0, y0, x1, y1), (x1 - x0) * (y1 - y0)
    if best is None:
        return None, 0, f"DICOM ultrasound regions (0018,6011) hold no 2D tissue region (they hold: {', '.join(kinds)})"
    return best, count, ""
