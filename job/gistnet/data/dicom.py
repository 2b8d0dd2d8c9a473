"""DICOM objects in: pixels, the ultrasound region and a patient id for grouping, nothing else.

A ``.dcm`` object is recognised by content (the ``DICM`` marker after the 128-byte preamble),
whatever its name; an object without the preamble and file meta (a bare data set, as dcmtk's
``-F`` writes) is read too when it is no other image and parses as a data set with pixel data.
pydicom reads it; compressed pixel data is decoded only by the licence-compatible decoders
(``DECODERS``) pydicom finds installed: Pillow (HPND) for JPEG Baseline, JPEG Extended 8-bit and
JPEG 2000, pydicom itself (MIT) for RLE and deflated data, pyjpegls (MIT, wrapping CharLS, BSD-3;
gistnet's ``jpegls`` extra) for JPEG-LS. Anything else (JPEG Lossless, JPEG-LS without the extra,
encrypted data) is not decoded: the object is skipped and listed with the reason and its
transfer syntax UID; a decoder's failure with the decoder's own reason.

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
# pydicom's decoding plugins gistnet uses: MIT/BSD/HPND only (pylibjpeg-libjpeg and gdcm are not used even when installed)
DECODERS = ("pillow", "pydicom", "pyjpegls")
JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
JPEG_LS_HINT = ("; install gistnet's jpegls extra (pip install 'gistnet[jpegls]': pyjpegls, MIT, wraps CharLS, "
                "BSD-3) or convert the file first (dcmtk's dcmdjpls)")


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


class NotDicom(ValueError):
    """Read as a bare data set (``headerless``), the object is no DICOM image."""


def _syntax(ds) -> str:
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is None:
        return "transfer syntax (none in the file meta)"
    name = uid.name if uid.is_transfer_syntax else "unknown"
    return f"transfer syntax {uid} ({name})"


def _bare(data: bytes):
    """A data set without preamble and file meta, its transfer syntax the encoding pydicom found;
    NotDicom unless it parses with pixel data and a size."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if "PixelData" not in ds or not ds.get("Rows") or not ds.get("Columns"):
            raise NotDicom("not a DICOM data set with pixel data")
        implicit, little = ds.original_encoding
    except Exception as exc:  # noqa: BLE001 - anything that is no data set
        raise NotDicom("not a DICOM data set with pixel data") from exc
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little \
        else ExplicitVRBigEndian
    ds.file_meta = meta
    return ds


def read(data: bytes, max_pixels: int, frame: int | None = None, where: str = "",
         headerless: bool = False) -> DicomImage:
    """Decode one frame (``frame``, else the first) of a DICOM object to 8 bits; ``headerless``:
    an object without preamble and file meta (NotDicom unless it is a data set with pixel data).

    Raises ``Undecodable`` (skip and list) for pixels that cannot be decoded, and ``IndexError``
    (a data error for the caller) when ``frame`` is not in the object."""
    import pydicom
    from pydicom import pixels as px

    # pydicom's warnings about malformed values quote the value (a name, a birth date): never emit them.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    if headerless:
        ds = _bare(data)
    else:
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
    plugin = ""  # native (uncompressed, deflated) data: pydicom's own decoder
    if uid is not None:
        try:
            decoder = px.get_decoder(uid)
            plugins = [] if decoder.is_native else [p for p in decoder.available_plugins if p in DECODERS]
            available = decoder.is_native or bool(plugins)
        except (NotImplementedError, ValueError):
            available, plugins = False, []
        if not available:
            raise Undecodable(f"no licence-compatible decoder for the DICOM {syntax}"
                              + (JPEG_LS_HINT if uid in JPEG_LS else ""))
        plugin = plugins[0] if plugins else ""
    rows, columns = _int(ds, "Rows", 0, syntax), _int(ds, "Columns", 0, syntax)
    frames = _int(ds, "NumberOfFrames", 1, syntax)
    if rows * columns > max_pixels:
        raise ValueError(f"image of {columns}x{rows} pixels exceeds data.max_image_pixels={max_pixels}")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in COLOUR + GRAY:
        raise Undecodable(f"DICOM photometric interpretation {photometric!r} is not one gistnet reads, {syntax}")
    index = 0 if frame is None else frame
    if index >= frames:
        raise IndexError(f"frame {index} is out of range: the DICOM has {frames} frame(s) (0..{frames - 1})")
    try:
        arr = px.pixel_array(ds, index=index if frames > 1 else None, decoding_plugin=plugin)  # YBR_* -> RGB
    except Exception as exc:  # noqa: BLE001 - decoders raise many kinds; the reason scrubbed of header values
        raise Undecodable(f"DICOM pixel data could not be decoded ({_decoder_reason(exc, ds)}), {syntax}") from None
    pixels = _to_8bit(arr, photometric, _int(ds, "BitsStored", 8, syntax), _int(ds, "PixelRepresentation", 0, syntax))
    box, tissue, no_tissue = _us_region(ds)
    return DicomImage(pixels, box, str(ds.get("PatientID", "") or ""), frames, index, tissue, no_tissue)


def _int(ds, keyword: str, default: int, syntax: str) -> int:
    """An integer attribute; Undecodable naming its tag and keyword (never its value) when it is not one."""
    try:
        return int(ds.get(keyword, default) or default)
    except (TypeError, ValueError, OverflowError):
        from pydicom.datadict import tag_for_keyword

        tag = tag_for_keyword(keyword) or 0
        raise Undecodable(f"DICOM attribute ({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword} does not hold an "
                          f"integer, {syntax}") from None


# value representations that hold text (names, ids, dates, codes): scrubbed from a decoder's message
TEXT_VRS = ("AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT")


def _decoder_reason(exc: Exception, ds) -> str:
    """A decoder's own reason in one line: each plugin's message (pydicom's RuntimeError lists them),
    with any header value of ``ds`` found in it replaced."""
    text = str(exc)
    if isinstance(exc, RuntimeError) and "plugins:" in text:
        text = "; ".join(line.strip() for line in text.split("plugins:", 1)[1].splitlines() if line.strip())
    else:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    for element in ds.iterall():
        try:
            if element.keyword in PIXEL_ATTRIBUTES or element.VR not in TEXT_VRS:
                continue
            values = [str(v) for v in (element.value if element.VM > 1 else [element.value]) if v is not None]
        except Exception:  # noqa: BLE001 - a value pydicom cannot convert: its raw bytes are not in the text
            continue
        for value in values:  # a short number ("200") is the decoder's own; a date or an MRN is not
            if len(value) >= (6 if value.isdigit() else 3) and value in text:
                text = text.replace(value, "<header value>")
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def _to_8bit(arr: np.ndarray, photometric: str, bits_stored: int, signed: int) -> np.ndarray:
    """MONOCHROME1 inverted; 8-bit kept; narrower data (1-bit) scaled from its full range to 0-255;
    wider data stretched over its used range (the rule ``dataset`` applies to 16-bit PNGs)."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if photometric == "MONOCHROME1":
        if signed:
            arr = arr.max() + arr.min() - arr.astype(np.int64)
        else:
            arr = (1 << bits_stored) - 1 - arr.astype(np.int64)
    if not signed and 1 <= bits_stored < 8:  # a 1-bit image decodes as 0/1: white is 255, not 1
        full = (1 << bits_stored) - 1
        return (np.clip(arr.astype(np.int64), 0, full) * 255 // full).astype(np.uint8)
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
