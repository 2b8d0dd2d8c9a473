"""DICOM in (pydicom): photometric interpretations, bit depths, frames, JPEG Baseline, and
the objects that cannot be decoded, skipped with the reason and the transfer syntax UID."""

import io

import numpy as np
import pytest
import torch
from gistnet.config import DataConfig
from gistnet.data import dataset, dicom
from gistnet.data.storage import LocalStore
from gistnet.errors import EXIT_DATA, DataError
from PIL import Image

from tests.data.test_dataset import png

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    SecondaryCaptureImageStorage,
    generate_uid,
)

SECRET_NAME = "ZZSECRET^PATIENT"
SECRET_ID = "MRN-99887766"


def make_dicom(frames: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 8, syntax=ExplicitVRLittleEndian,
               pixel_data: bytes | None = None, region=None, patient_id: str = SECRET_ID, no_pixels: bool = False) -> bytes:
    """A Part 10 file; ``frames`` is F x H x W [x 3] (F frames) or H x W [x 3]."""
    multi = frames.ndim == (3 if photometric in dicom.GRAY else 4)
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.InstitutionName = SECRET_NAME, patient_id, "ZZ SECRET HOSPITAL"
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.Modality = "US"
    shape = frames.shape[1:] if multi else frames.shape
    ds.Rows, ds.Columns = shape[0], shape[1]
    ds.SamplesPerPixel = 3 if photometric not in dicom.GRAY else 1
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    if multi:
        ds.NumberOfFrames = frames.shape[0]
    if region is not None:  # one 2D tissue region (x0, y0, x1, y1), or [(box, data type, spatial format), ...]
        items = []
        for box, data_type, spatial in ([(region, 1, 1)] if isinstance(region, tuple) else region):
            item = Dataset()
            item.RegionSpatialFormat, item.RegionDataType, item.RegionFlags = spatial, data_type, 0
            item.RegionLocationMinX0, item.RegionLocationMinY0 = box[0], box[1]
            item.RegionLocationMaxX1, item.RegionLocationMaxY1 = box[2] - 1, box[3] - 1
            items.append(item)
        ds.SequenceOfUltrasoundRegions = pydicom.Sequence(items)
    if not no_pixels:
        ds.PixelData = pixel_data if pixel_data is not None else frames.astype(np.uint16 if bits == 16 else np.uint8).tobytes()
        if pixel_data is not None:
            ds["PixelData"].VR = "OB"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    ds.file_meta, ds.preamble = meta, b"\0" * 128
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def ramp(h=48, w=64, lo=0, hi=255):
    return np.tile(np.linspace(lo, hi, w).round().astype(np.int64), (h, 1))


def test_recognised_by_content_not_name():
    data = make_dicom(ramp().astype(np.uint8))
    assert dicom.is_dicom(data) and not dicom.is_dicom(png(ramp().astype(np.uint8)))


def test_monochrome2_8bit_is_the_pixels_and_monochrome1_is_inverted():
    pixels = ramp().astype(np.uint8)
    assert np.array_equal(dicom.read(make_dicom(pixels), 10**8).pixels, pixels)
    assert np.array_equal(dicom.read(make_dicom(pixels, "MONOCHROME1"), 10**8).pixels, 255 - pixels)


def test_16bit_is_stretched_over_its_used_range_like_a_16bit_png():
    pixels = ramp(lo=1000, hi=5000).astype(np.uint16)
    out = dicom.read(make_dicom(pixels, bits=16), 10**8).pixels
    reference = dataset.decode_item(png(pixels), 64, 10**8, "none").pixels
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    fitted = dataset.decode_item(make_dicom(pixels, bits=16), 64, 10**8, "none").pixels
    assert np.array_equal(fitted, reference)


def test_rgb_and_ybr_full_come_out_as_rgb():
    rng = np.random.default_rng(0)
    rgb = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    assert np.array_equal(dicom.read(make_dicom(rgb, "RGB"), 10**8).pixels, rgb)
    from pydicom.pixels import convert_color_space
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    back = dicom.read(make_dicom(ybr, "YBR_FULL"), 10**8).pixels
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 2


def test_jpeg_baseline_ybr_full_422_decodes_through_pillow():
    gray_rgb = np.repeat(ramp().astype(np.uint8)[..., None], 3, axis=2)
    buf = io.BytesIO()
    Image.fromarray(gray_rgb).save(buf, format="JPEG", quality=95, subsampling=1)
    data = make_dicom(gray_rgb, "YBR_FULL_422", syntax=JPEGBaseline8Bit, pixel_data=encapsulate([buf.getvalue()]))
    out = dicom.read(data, 10**8).pixels
    assert out.shape == (48, 64, 3) and np.abs(out.astype(int) - gray_rgb).max() <= 3
    # a gray picture stays one channel after the existing rule (three equal channels -> gray)
    assert dataset.decode_item(data, 32, 10**8, "none").pixels.ndim in (2, 3)


def test_multi_frame_first_by_default_or_the_manifest_frame(tmp_path):
    frames = np.stack([np.full((40, 40), v, np.uint8) for v in (10, 120, 240)])
    data = make_dicom(frames)
    assert dicom.read(data, 10**8).pixels.max() == 10
    assert dicom.read(data, 10**8, frame=2).pixels.min() == 240
    with pytest.raises(DataError, match=r"frame 3 is out of range: the DICOM has 3 frame\(s\)") as info:
        dataset.decode_item(data, 32, 10**8, "none", frame=3, where="s3://b/x.dcm")
    assert "s3://b/x.dcm" in str(info.value) and info.value.exit_code == EXIT_DATA


def test_frame_out_of_range_is_exit_4_naming_the_file(tmp_path):
    store = LocalStore(tmp_path)
    frames = np.stack([np.full((40, 40), v, np.uint8) for v in (10, 120)])
    for i in range(4):
        store.write_bytes(f"f/{i}.dcm", make_dicom(frames + i))
    store.write_bytes("manifest.csv", b"path,label,frame\nf/0.dcm,GIST,1\nf/1.dcm,GIST,0\nf/2.dcm,LM,5\nf/3.dcm,LM,\n")
    with pytest.raises(DataError, match="f/2.dcm: frame 5 is out of range") as info:
        dataset.load_images(store, DataConfig(image_size=32, min_images_per_class=2), torch.device("cpu"))
    assert info.value.exit_code == EXIT_DATA


def test_undecodable_dicom_is_skipped_with_reason_and_transfer_syntax(tmp_path):
    store = LocalStore(tmp_path)
    rng = np.random.default_rng(1)
    for label in ("GIST", "LM"):
        for i in range(3):
            store.write_bytes(f"{label}/{i}.dcm", make_dicom((rng.random((40, 40)) * 255).astype(np.uint8)))
    store.write_bytes("GIST/lossless.dcm", make_dicom(ramp().astype(np.uint8), syntax=JPEGLosslessSV1,
                                                      pixel_data=encapsulate([b"\xff\xd8not really\xff\xd9"])))
    store.write_bytes("LM/nopixels.dcm", make_dicom(ramp().astype(np.uint8), no_pixels=True))
    loaded = dataset.load_images(store, DataConfig(image_size=32, min_images_per_class=2), torch.device("cpu"))
    reasons = {s["uri"].rpartition("/")[2]: s["reason"] for s in loaded.skipped}
    assert reasons["lossless.dcm"] == ("no licence-compatible decoder for the DICOM transfer syntax "
                                       f"{JPEGLosslessSV1} ({JPEGLosslessSV1.name})")
    assert reasons["nopixels.dcm"] == f"DICOM without pixel data, transfer syntax {ExplicitVRLittleEndian} " \
                                      "(Explicit VR Little Endian)"
    assert not any(SECRET_NAME in r or SECRET_ID in r for r in reasons.values())


def test_patient_id_groups_but_only_a_pseudonym_comes_out(tmp_path):
    store = LocalStore(tmp_path)
    rng = np.random.default_rng(2)
    for label in ("GIST", "LM"):
        for i in range(4):
            store.write_bytes(f"{label}/{i}.dcm", make_dicom((rng.random((40, 40)) * 255).astype(np.uint8),
                                                             patient_id=f"{SECRET_ID}-{label}-{i // 2}"))
    store.write_bytes("LM/screen.png", png((rng.random((40, 40)) * 255).astype(np.uint8)))
    loaded = dataset.load_images(store, DataConfig(image_size=32, min_images_per_class=2), torch.device("cpu"))
    ids = dict(zip(loaded.images.keys, loaded.images.patient_ids))
    assert ids["GIST/0.dcm"] == ids["GIST/1.dcm"] != ids["GIST/2.dcm"]
    assert ids["LM/screen.png"] and ids["LM/screen.png"] not in {ids[k] for k in ids if k.endswith(".dcm")}
    assert not any(SECRET_ID in p for p in ids.values())


def test_dicom_ultrasound_region_is_cropped_before_the_resize():
    pixels = np.full((60, 80), 255, np.uint8)
    pixels[10:50, 20:60] = ramp(40, 40, 0, 200).astype(np.uint8)
    data = make_dicom(pixels, region=(20, 10, 60, 50))
    assert dicom.read(data, 10**8).region == (20, 10, 60, 50)
    inside = dataset.decode_item(data, 32, 10**8, "dicom").pixels
    assert inside.max() < 255  # nothing of the white frame
    assert dataset.decode_item(data, 32, 10**8, "none").pixels.max() == 255  # the test can fail

