"""``gistnet synth --format dicom``: the synthetic lesions as a hospital archive would hold them.

Each image is the processor's screen: the sector scan (``synth.render``) in a black frame, with a
fake patient's name, id, birth date and hospital burned into the pixels above and beside the
sector, in a value the sector never has (``TEXT_VALUE``; the sector is capped below it). Every
fourth image is a screenshot-style PNG of that screen (no header, no region: ``data.roi: auto``
finds the sector); the others are DICOM (pydicom) with fake but realistic headers and a
Sequence of Ultrasound Regions bounding the sector, in turn:

* uncompressed MONOCHROME2, 8 bits (Ultrasound Image Storage);
* JPEG Baseline, YBR_FULL_422 (an RGB screen written by Pillow, encapsulated by pydicom);
* multi-frame (3 frames, Ultrasound Multi-frame Image Storage), uncompressed RGB.

Patients have two images each, so a PatientID-grouped split has something to group. Every
header value is recorded in ``synth.json`` (``header_values``) so tests can look for them in
outputs; nothing here is a real person.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gistnet.data import synth

TEXT_VALUE = 255  # burned-in text; sector pixels are capped at SECTOR_MAX
SECTOR_MAX = 250
KINDS = ("dicom-mono", "dicom-jpeg-ybr422", "dicom-multiframe-rgb", "png-screenshot")
FIRST_NAMES = ("JANE", "JOHN", "MARIA", "WEI", "AMINA", "OLAF", "PRIYA", "KENJI")
LAST_NAMES = ("FAKEMAN", "NOTREAL", "SYNTHOS", "PSEUDOVA", "MOCKWELL", "DUMMSEN")


def geometry(size: int) -> tuple[int, int, tuple[int, int, int, int]]:
    """Screen width, height and the sector's box (x0, y0, x1, y1) for a ``size`` sector."""
    def up16(n: int) -> int:  # JPEG blocks (16x8 for 4:2:2) never straddle the sector's edge
        return -(-n // 16) * 16

    mx, top, bottom = up16(max(16, size // 4)), up16(max(32, size // 3)), up16(max(16, size // 8))
    return up16(size) + 2 * mx, top + up16(size) + bottom, (mx, top, mx + size, top + size)


def patient(seed: int, number: int) -> dict[str, str]:
    """A fake patient's identifying header values (distinctive strings, so a test can find them)."""
    rng = np.random.default_rng([seed, 7_000_003, number])
    return {
        "PatientName": f"{LAST_NAMES[number % len(LAST_NAMES)]}^{FIRST_NAMES[number % len(FIRST_NAMES)]}^Q{number:03d}",
        "PatientID": f"MRN{seed:02d}{number:05d}X",
        "PatientBirthDate": f"19{40 + int(rng.integers(0, 50)):02d}{1 + int(rng.integers(0, 12)):02d}{1 + int(rng.integers(0, 28)):02d}",
        "InstitutionName": f"Fictional General Hospital {number % 3}",
        "ReferringPhysicianName": f"DRFAKE^ZELDA^{number:03d}",
        "AccessionNumber": f"ACC{seed:02d}{number:06d}Z",
    }


def screen(label: str, index: int, size: int, seed: int, person: dict[str, str], text: bool = True
           ) -> tuple[np.ndarray, tuple[int, int, int, int], synth.Lesion]:
    """The gray screen (uint8 HxW) with the sector at its box, and the box."""
    class_offset = synth.CLASSES.index(label) * 1_000_003
    rng = np.random.default_rng([seed, class_offset + index])
    lesion = synth.sample_lesion(label, rng)
    sector = np.minimum(synth.render(lesion, size, rng), SECTOR_MAX)
    width, height, box = geometry(size)
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[box[1]:box[3], box[0]:box[2]] = sector
    if text:
        canvas = Image.fromarray(pixels)
        draw = ImageDraw.Draw(canvas)
        font = ImageFont.load_default(size=max(6, (box[1] - 10) // 2))
        lines = (f"{person['PatientName']} {person['PatientID']}",
                 f"{person['PatientBirthDate']} {person['InstitutionName']}")
        for n, line in enumerate(lines):
            draw.text((2, 1 + n * (box[1] - 10) // 2), line, fill=TEXT_VALUE, font=font)
        # A scale bar and a date beside the sector, left of it: outside the box, as processors do.
        draw.rectangle((2, box[1], 4, box[3] - 1), fill=TEXT_VALUE)
        pixels = np.array(canvas)
        pixels[box[1] - 8:box[3] + 8, box[0] - 8:box[2] + 8] = 0  # a gap: the text never touches the sector
        pixels[box[1]:box[3], box[0]:box[2]] = sector
    return pixels, box, lesion


def _dataset(kind: str, frames: list[np.ndarray], box, person: dict[str, str], seed: int, number: int):
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.sequence import Sequence
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        UltrasoundImageStorage,
        UltrasoundMultiFrameImageStorage,
        generate_uid,
    )

    multi = kind == "dicom-multiframe-rgb"
    ds = Dataset()
    for name, value in person.items():
        setattr(ds, name, value)
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = f"2024{1 + number % 12:02d}{1 + number % 28:02d}"
    ds.StudyTime = "101500"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (generate_uid(entropy_srcs=[str(seed), str(number), k])
                                                                   for k in ("study", "series", "sop"))
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage if multi else UltrasoundImageStorage
    ds.Modality = "US"
    ds.Manufacturer = "Synthetic Echoendoscopes Ltd"
    ds.StudyDescription = "EUS UPPER GI FAKE"
    height, width = frames[0].shape[:2]
    ds.Rows, ds.Columns = height, width
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    region = Dataset()
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = box[0], box[1]
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = box[2] - 1, box[3] - 1  # inclusive
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX = region.PhysicalDeltaY = 5.0 / (box[3] - box[1])
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    if kind == "dicom-jpeg-ybr422":
        rgb = np.repeat(frames[0][..., None], 3, axis=2)
        buf = io.BytesIO()
        Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=95, subsampling=1)  # 4:2:2
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
    elif multi:
        stack = np.stack([np.repeat(f[..., None], 3, axis=2) for f in frames])
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        ds.PhotometricInterpretation = "RGB"
        ds.NumberOfFrames = len(frames)
        ds.PixelData = stack.tobytes()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = frames[0].tobytes()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue(), ds


def generate(label: str, index: int, size: int, seed: int, text: bool = True) -> tuple[bytes, str, dict, dict]:
    """(bytes, suffix, header values, record) of image ``index`` of ``label``."""
    kind = KINDS[index % len(KINDS)]
    number = synth.CLASSES.index(label) * 10_000 + index // 2  # two images per patient
    person = patient(seed, number)
    pixels, box, lesion = screen(label, index, size, seed, person, text)
    record = {"kind": kind, "region": list(box), **asdict(lesion)}
    if kind == "png-screenshot":
        buf = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buf, format="PNG")
        return buf.getvalue(), ".png", person, record
    frames = [pixels]
    if kind == "dicom-multiframe-rgb":  # later frames: the probe moved a little
        frames += [np.roll(pixels, shift, axis=1) for shift in (2, 4)]
    data, ds = _dataset(kind, frames, box, person, seed, number)
    values = {**person, "StudyDate": str(ds.StudyDate), "StudyInstanceUID": str(ds.StudyInstanceUID),
              "SeriesInstanceUID": str(ds.SeriesInstanceUID), "SOPInstanceUID": str(ds.SOPInstanceUID),
              "StudyDescription": str(ds.StudyDescription), "Manufacturer": str(ds.Manufacturer)}
    return data, ".dcm", values, record


def write_dataset(store, n_gist: int, n_lm: int, size: int, seed: int,
                  class_names: tuple[str, str] = ("GIST", "LM"), on_progress=None) -> dict:
    """Write ``<class>/<class>_NNNN.dcm|.png`` into ``store`` plus ``synth.json``."""
    records, header_values = [], set()
    total, done = n_gist + n_lm, 0
    for label, folder, count in (("GIST", class_names[0], n_gist), ("LM", class_names[1], n_lm)):
        for i in range(count):
            data, suffix, values, record = generate(label, i, size, seed)
            key = f"{folder}/{label.lower()}_{i:04d}{suffix}"
            store.write_bytes(key, data)
            records.append({"key": key, **record})
            header_values.update(values.values())
            done += 1
            if on_progress:
                on_progress(done, total)
    summary = {"generator": "gistnet.data.synth_dicom", "seed": seed, "image_size": size, "format": "dicom",
               "text_value": TEXT_VALUE, "counts": {class_names[0]: n_gist, class_names[1]: n_lm},
               "header_values": sorted(header_values), "images": records}
    store.write_bytes("synth.json", json.dumps(summary, indent=1).encode())
    return summary
