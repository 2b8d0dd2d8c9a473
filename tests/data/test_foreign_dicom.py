"""DICOM that nobody on the project wrote: files made by dcmtk (``img2dcm``, ``dcmodify``) and
pydicom's own test files, decoded, cut to their tissue region or skipped with a reason that says why."""

import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from gistnet.config import DataConfig
from gistnet.data import dataset, dicom
from gistnet.data.storage import LocalStore
from PIL import Image

from tests.conftest import system_tool
from tests.data.test_dicom import make_dicom

pydicom = pytest.importorskip("pydicom")


def dcmtk(*args: str) -> None:
    subprocess.run([system_tool(args[0], "dcmtk"), *args[1:]], check=True, capture_output=True, text=True)


def regions_by_dcmodify(path: Path, regions: list[tuple[int, int, tuple[int, int, int, int]]]) -> None:
    """Write a Sequence of Ultrasound Regions into ``path`` with dcmodify: (spatial format, data
    type, (x0, y0, x1, y1) inclusive) per item."""
    args = []
    for i, (spatial, data_type, (x0, y0, x1, y1)) in enumerate(regions):
        for tag, value in (("6012", spatial), ("6014", data_type), ("6016", 0), ("6018", x0), ("601a", y0),
                           ("601c", x1), ("601e", y1)):
            args += ["-i", f"(0018,6011)[{i}].(0018,{tag})={value}"]
    dcmtk("dcmodify", "-nb", *args, str(path))


def test_a_tissue_region_beside_a_larger_doppler_region_is_the_one_used(tmp_path):
    # a B-mode image (gray 100) above a wider spectral Doppler strip (gray 200), as a scanner lays them out
    screen = np.zeros((100, 160), np.uint8)
    screen[5:45, 10:50] = 100
    screen[50:98, :] = 200
    Image.fromarray(screen).convert("RGB").save(tmp_path / "screen.bmp")
    dcmtk("img2dcm", "-i", "BMP", str(tmp_path / "screen.bmp"), str(tmp_path / "us.dcm"))
    regions_by_dcmodify(tmp_path / "us.dcm", [(1, 1, (10, 5, 49, 44)), (3, 3, (0, 50, 159, 97))])
    data = (tmp_path / "us.dcm").read_bytes()
    image = dicom.read(data, 10**8)
    assert image.region == (10, 5, 50, 45) and image.tissue_regions == 1
    pixels = dataset.decode_item(data, 32, 10**8, "auto").pixels
    assert pixels.min() == pixels.max() == 100  # the tissue only, not one pixel of the Doppler trace


def test_several_tissue_regions_the_largest_is_used_and_the_count_stated(tmp_path, caplog):
    store = LocalStore(tmp_path)
    for label in ("GIST", "LM"):
        for i in range(2):
            pixels = np.full((60, 100), 20, np.uint8)
            pixels[:, 50:] = 200  # the larger tissue region (right) is bright, the smaller (left) dark
            region = [((0, 0, 40, 40), 1, 1), ((50, 0, 100, 60), 1, 1)] if i == 0 else (50, 0, 100, 60)
            store.write_bytes(f"{label}/{i}.dcm", make_dicom(pixels, region=region))
    with caplog.at_level(logging.INFO, logger="gistnet"):
        loaded = dataset.load_images(store, DataConfig(image_size=32, min_images_per_class=2), torch.device("cpu"))
    assert loaded.images.images.min() == 200
    assert "2 DICOM objects have several 2D tissue ultrasound regions: each is cut to its largest" in caplog.text


def test_regions_without_tissue_are_skipped_with_the_reason(tmp_path):
    store = LocalStore(tmp_path)
    rng = np.random.default_rng(4)
    for label in ("GIST", "LM"):
        for i in range(2):
            store.write_bytes(f"{label}/{i}.dcm", make_dicom((rng.random((60, 80)) * 255).astype(np.uint8),
                                                             region=(0, 0, 60, 60)))
    doppler_only = [((0, 0, 80, 30), 3, 3), ((0, 30, 80, 60), 1, 2)]  # a PW Doppler strip and an M-mode strip
    store.write_bytes("GIST/doppler.dcm", make_dicom((rng.random((60, 80)) * 255).astype(np.uint8),
                                                      region=doppler_only))
    loaded = dataset.load_images(store, DataConfig(image_size=32, min_images_per_class=2), torch.device("cpu"))
    assert loaded.skipped == [{"uri": store.uri_of("GIST/doppler.dcm"), "reason": (
        "DICOM ultrasound regions (0018,6011) hold no 2D tissue region (they hold: PW spectral Doppler, "
        "tissue in spatial format 2)")}]
    # with data.roi: none the regions are not asked for: the whole image is used
    whole = dataset.load_images(store, DataConfig(image_size=32, min_images_per_class=2, roi="none"),
                                torch.device("cpu"))
    assert not whole.skipped and len(whole.images.keys) == 5


def pydicom_file(name: str) -> Path:
    """One of pydicom's own test files (shipped in the wheel)."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file(name))


LOG_LINE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: "


@pytest.mark.e2e
def test_a_run_that_skips_pydicom_failures_logs_them_as_one_warning_line_each(cli, tiny_runs, tiny_data, tmp_path):
    import re
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    for png in sorted((tiny_data / "GIST").iterdir())[:2]:
        shutil.copy(png, data / png.name)
    # a 12-bit JPEG Extended (pydicom logs ERROR with a traceback), a JPEG 2000 with a broken stream (the same),
    # pixel data with excess padding (pydicom logs it and warns it: a UserWarning)
    for name in ("JPGExtended.dcm", "GDCMJ2K_TextGBR.dcm", "MR_small_padded.dcm"):
        shutil.copy(pydicom_file(name), data / name)
    done = cli("predict", "--run", tiny_runs / "a", "--data", data, "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert all(re.match(LOG_LINE, line) for line in lines), done.stderr  # no traceback, no raw warning line
    pydicom_lines = [line for line in lines if " pydicom" in line]
    assert any("Pillow does not support 'JPEG Extended' for samples with 12-bit precision" in line
               for line in pydicom_lines), done.stderr
    assert any("broken data stream" in line for line in pydicom_lines), done.stderr
    padding = [line for line in lines if "128 bytes of excess padding" in line]
    assert len(padding) == 1, done.stderr  # pydicom both logs and warns it: said once
    assert all(" WARNING " in line for line in pydicom_lines + padding), done.stderr


def skip_reasons(tmp_path, files: dict[str, bytes]) -> dict[str, str]:
    """Load ``files`` (name -> bytes, under GIST/) beside enough good images; the skip reason of each."""
    store = LocalStore(tmp_path)
    rng = np.random.default_rng(5)
    for label in ("GIST", "LM"):
        for i in range(2):
            store.write_bytes(f"{label}/good{i}.dcm", make_dicom((rng.random((40, 40)) * 255).astype(np.uint8)))
    for name, data in files.items():
        store.write_bytes(f"GIST/{name}", data)
    loaded = dataset.load_images(store, DataConfig(image_size=32, min_images_per_class=2), torch.device("cpu"))
    return {s["uri"].rpartition("/")[2]: s["reason"] for s in loaded.skipped}


def test_skip_reasons_name_the_attribute_and_the_decoders_reason(tmp_path):
    files = {name: pydicom_file(name).read_bytes() for name in ("badVR.dcm", "JPGExtended.dcm", "MR_truncated.dcm")}
    reasons = skip_reasons(tmp_path, files)
    assert reasons["badVR.dcm"] == ("DICOM attribute (0028,0008) NumberOfFrames does not hold an integer, transfer "
                                    "syntax 1.2.840.10008.1.2.1 (Explicit VR Little Endian)")  # not its value '1A'
    assert reasons["JPGExtended.dcm"].startswith(
        "DICOM pixel data could not be decoded (pillow: Pillow does not support 'JPEG Extended' for samples with "
        "12-bit precision), transfer syntax 1.2.840.10008.1.2.4.51")
    assert reasons["MR_truncated.dcm"].startswith("DICOM pixel data could not be decoded (ValueError: The number of "
                                                  "bytes of pixel data is less than expected (8130 vs 8192 bytes)")


def test_a_decoders_reason_never_quotes_a_header_value():
    from tests.data.test_dicom import SECRET_ID, SECRET_NAME

    ds = pydicom.dcmread(__import__("io").BytesIO(make_dicom(np.zeros((8, 8), np.uint8))))
    failure = RuntimeError(f"Unable to decode as exceptions were raised by all available plugins:\n  pillow: "
                           f"cannot identify {SECRET_NAME} in 200 bytes\n  pydicom: no {SECRET_ID}")
    assert dicom._decoder_reason(failure, ds) == ("pillow: cannot identify <header value> in 200 bytes; "
                                                  "pydicom: no <header value>")


def test_a_data_set_without_preamble_and_file_meta_is_read(tmp_path):
    screen = (np.arange(48 * 64).reshape(48, 64) % 251).astype(np.uint8)
    Image.fromarray(screen).convert("RGB").save(tmp_path / "screen.bmp")
    dcmtk("img2dcm", "-i", "BMP", str(tmp_path / "screen.bmp"), str(tmp_path / "part10.dcm"))
    dcmtk("dcmconv", "+ti", "-F", str(tmp_path / "part10.dcm"), str(tmp_path / "bare.dcm"))  # no preamble, no meta
    bare = (tmp_path / "bare.dcm").read_bytes()
    assert not dicom.is_dicom(bare)
    assert np.array_equal(dataset.decode_item(bare, 32, 10**8, "none").pixels,
                          dataset.decode_item((tmp_path / "part10.dcm").read_bytes(), 32, 10**8, "none").pixels)
    reasons = skip_reasons(tmp_path / "data", {"bare.dcm": bare, "notes.dcm": b"(0010,0010) is not here\n" * 20})
    assert "bare.dcm" not in reasons and reasons["notes.dcm"] == "not a recognised image (PNG, JPEG, BMP, TIFF or DICOM)"


def test_jpeg_ls_decodes_through_the_jpegls_extra_or_is_skipped_naming_it(tmp_path, monkeypatch):
    # dcmtk's JPEG-LS (lossless) of an image: decoded through pyjpegls, it is the image
    screen = (np.arange(48 * 64).reshape(48, 64) % 251).astype(np.uint8)
    Image.fromarray(screen).convert("RGB").save(tmp_path / "screen.bmp")
    dcmtk("img2dcm", "-i", "BMP", str(tmp_path / "screen.bmp"), str(tmp_path / "plain.dcm"))
    dcmtk("dcmcjpls", str(tmp_path / "plain.dcm"), str(tmp_path / "jls.dcm"))
    jls = (tmp_path / "jls.dcm").read_bytes()
    assert pydicom.dcmread(tmp_path / "jls.dcm").file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"  # JPEG-LS
    assert np.array_equal(dicom.read(jls, 10**8).pixels, dicom.read((tmp_path / "plain.dcm").read_bytes(), 10**8).pixels)
    assert np.array_equal(dicom.read(pydicom_file("MR_small_jpeg_ls_lossless.dcm").read_bytes(), 10**8).pixels,
                          dicom.read(pydicom_file("MR_small.dcm").read_bytes(), 10**8).pixels)
    # without the extra: skipped, naming it and the dcmtk tool that converts such a file
    monkeypatch.setattr(dicom, "DECODERS", tuple(d for d in dicom.DECODERS if d != "pyjpegls"))
    reasons = skip_reasons(tmp_path / "data", {"jls.dcm": jls})
    assert reasons["jls.dcm"] == ("no licence-compatible decoder for the DICOM transfer syntax 1.2.840.10008.1.2.4.80 "
                                  "(JPEG-LS Lossless Image Compression); install gistnet's jpegls extra (pip install "
                                  "'gistnet[jpegls]': pyjpegls, MIT, wraps CharLS, BSD-3) or convert the file first "
                                  "(dcmtk's dcmdjpls)")


def test_a_one_bit_image_is_scaled_to_0_255():
    data = pydicom_file("liver_1frame.dcm").read_bytes()  # BitsStored 1: pydicom decodes it as 0/1
    stored = pydicom.dcmread(pydicom_file("liver_1frame.dcm")).pixel_array
    pixels = dicom.read(data, 10**8).pixels
    assert set(np.unique(stored)) == {0, 1} and set(np.unique(pixels)) == {0, 255}
    assert np.array_equal(pixels, stored.astype(np.uint8) * 255)


def test_an_image_too_small_is_skipped_whatever_its_size_format_or_region(tmp_path):
    from tests.data.test_dataset import png

    bordered = np.zeros((12, 12), np.uint8)
    bordered[2:10, 2:10] = 180  # a black border: data.roi auto finds an 8 x 8 region
    reasons = skip_reasons(tmp_path, {"three.png": png(np.full((3, 3), 120, np.uint8)), "bordered.png": png(bordered),
                                      "rtdose.dcm": pydicom_file("rtdose_1frame.dcm").read_bytes(),
                                      "edge.png": png(np.full((16, 40), 90, np.uint8))})  # 16 px: just enough
    assert reasons == {
        "three.png": "image of 3x3 pixels is too small for data.image_size=32 (each side at least 16)",
        "bordered.png": "image of 12x12 pixels is too small for data.image_size=32 (each side at least 16)",
        "rtdose.dcm": "image of 10x10 pixels is too small for data.image_size=32 (each side at least 16)"}


def test_deflated_dicom_is_decoded(tmp_path):
    screen = (np.arange(48 * 64).reshape(48, 64) % 251).astype(np.uint8)
    Image.fromarray(screen).convert("RGB").save(tmp_path / "screen.bmp")
    dcmtk("img2dcm", "-i", "BMP", str(tmp_path / "screen.bmp"), str(tmp_path / "plain.dcm"))
    dcmtk("dcmconv", "+td", str(tmp_path / "plain.dcm"), str(tmp_path / "deflated.dcm"))
    assert pydicom.dcmread(tmp_path / "deflated.dcm").file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
    assert np.array_equal(dicom.read((tmp_path / "deflated.dcm").read_bytes(), 10**8).pixels,
                          np.repeat(screen[..., None], 3, axis=2))  # img2dcm writes RGB
    assert dicom.read(pydicom_file("image_dfl.dcm").read_bytes(), 10**8).pixels.shape == (512, 512)
