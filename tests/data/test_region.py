"""Only the ultrasound region reaches the tensor: DICOM regions, manifest roi, data.roi: auto."""

import io
import json

import numpy as np
import pytest
import torch
from gistnet.config import DataConfig
from gistnet.data import dataset, region, synth_dicom
from gistnet.data.storage import LocalStore
from gistnet.errors import EXIT_DATA, DataError
from PIL import Image

from tests.data.test_dataset import png
from tests.data.test_dicom import make_dicom


def _archive(tmp_path, text: bool) -> LocalStore:
    """The synthetic archive (DICOM of every kind + screenshot PNGs), with or without burned-in text."""
    store = LocalStore(tmp_path / ("text" if text else "clean"))
    for label in ("GIST", "LM"):
        for i in range(8):
            data, suffix, _, _ = synth_dicom.generate(label, i, 64, 3, text=text)
            store.write_bytes(f"{label}/{i}{suffix}", data)
    return store


@pytest.mark.parametrize("mode", ["auto", "dicom"])
def test_no_pixel_from_outside_the_region_enters_the_tensor(tmp_path, mode):
    """The same archive with and without the burned-in text loads to the same tensor; with
    data.roi: none the text does change it (so this test can fail)."""
    cfg = DataConfig(image_size=32, min_images_per_class=2, roi=mode)
    with_text = dataset.load_images(_archive(tmp_path, True), cfg, torch.device("cpu")).images
    clean = dataset.load_images(_archive(tmp_path, False), cfg, torch.device("cpu")).images
    assert with_text.keys == clean.keys and len(with_text.keys) == 16
    screenshots = [i for i, k in enumerate(clean.keys) if k.endswith(".png")]
    dicoms = [i for i, k in enumerate(clean.keys) if k.endswith(".dcm")]
    rows = dicoms + (screenshots if mode == "auto" else [])
    assert torch.equal(with_text.images[rows], clean.images[rows])
    # the text value never appears where the sector is capped below it
    assert int(with_text.images[rows].max()) < synth_dicom.TEXT_VALUE
    if mode == "dicom":  # screenshots have no DICOM region: only auto protects them
        assert not torch.equal(with_text.images[screenshots], clean.images[screenshots])
    none = DataConfig(image_size=32, min_images_per_class=2, roi="none")
    assert not torch.equal(dataset.load_images(_archive(tmp_path, True), none, torch.device("cpu")).images.images,
                           dataset.load_images(_archive(tmp_path, False), none, torch.device("cpu")).images.images)


def test_auto_finds_the_largest_non_background_area_and_blanks_the_rest():
    screen = np.zeros((80, 100), np.uint8)
    screen[20:70, 30:90] = 100
    screen[22, 32] = 3  # dark, inside: kept (holes are filled)
    screen[2:6, 2:40] = 255  # text, away from it
    pixels, box, fanned = region.auto(screen)
    assert box == (30, 20, 90, 70) and pixels.shape == (50, 60) and pixels.max() == 100
    assert fanned.shape == "rectangle" and fanned.known  # a linear probe's image: its box
    assert region.auto(np.full((10, 10), 50, np.uint8)) is None  # nothing is background: the whole image


def test_manifest_roi_overrides_the_dicom_region_for_any_format(tmp_path):
    pixels = np.zeros((60, 80), np.uint8)
    pixels[0:40, 0:40] = 200
    pixels[20:60, 40:80] = 50
    data = make_dicom(pixels, region=(0, 0, 40, 40))
    assert dataset.decode_item(data, 32, 10**8, "auto").pixels.min() == 200
    assert dataset.decode_item(data, 32, 10**8, "auto", roi=(40, 20, 80, 60)).pixels.max() == 50
    assert dataset.decode_item(png(pixels), 32, 10**8, "none", roi=(40, 20, 80, 60)).pixels.max() == 50


@pytest.mark.parametrize("roi, message", [
    ((0, 0, 90, 40), "the manifest roi region 0 0 90 40 is not inside the 80x60 image"),
    ((0, 0, 10, 10), "the manifest roi region 0 0 10 10 (10x10) is too small for data.image_size=32"),
])
def test_a_region_outside_the_image_or_too_small_is_exit_4_naming_the_file(tmp_path, roi, message):
    store = LocalStore(tmp_path)
    rng = np.random.default_rng(0)
    for i in range(4):
        store.write_bytes(f"i/{i}.png", png((rng.random((60, 80)) * 255).astype(np.uint8)))
    store.write_bytes("manifest.csv", ("path,label,roi\n" + "".join(
        f"i/{i}.png,{'GIST' if i % 2 else 'LM'},{' '.join(map(str, roi)) if i == 3 else '0 0 40 40'}\n"
        for i in range(4))).encode())
    with pytest.raises(DataError) as info:
        dataset.load_images(store, DataConfig(image_size=32, min_images_per_class=2), torch.device("cpu"))
    assert str(info.value) == f"{store.uri_of('i/3.png')}: {message}" or \
        str(info.value).startswith(f"{store.uri_of('i/3.png')}: {message}")
    assert info.value.exit_code == EXIT_DATA


def test_a_dicom_region_too_small_for_the_image_size_is_exit_4():
    data = make_dicom(np.full((60, 80), 90, np.uint8), region=(0, 0, 12, 12))
    with pytest.raises(DataError, match="x.dcm: the DICOM ultrasound region 0 0 12 12 .12x12. is too small") as info:
        dataset.decode_item(data, 64, 10**8, "auto", where="x.dcm")
    assert info.value.exit_code == EXIT_DATA
    assert dataset.decode_item(data, 64, 10**8, "none").pixels.shape == (64, 64)  # data.roi: none ignores it


def test_synth_dicom_records_its_regions_and_header_values(tmp_path):
    store = LocalStore(tmp_path)
    summary = synth_dicom.write_dataset(store, 4, 4, 64, seed=0)
    kinds = {r["kind"] for r in summary["images"]}
    assert kinds == set(synth_dicom.KINDS)
    assert any(v.startswith("MRN") for v in summary["header_values"])
    assert json.loads(store.read("synth.json"))["text_value"] == 255
    shot = next(r for r in summary["images"] if r["kind"] == "png-screenshot")
    pixels = np.asarray(Image.open(io.BytesIO(store.read(shot["key"]))))
    x0, y0, x1, y1 = shot["region"]
    assert (pixels == 255).any() and not (pixels[y0:y1, x0:x1] == 255).any()  # text burned in, outside only


def test_auto_keeps_a_sector_that_touches_the_image_edge():
    screen = np.zeros((60, 80), np.uint8)
    screen[0:60, 20:80] = 120  # the sector runs to the top, bottom and right edges
    screen[5, 2:10] = 255  # text on the left
    pixels, box, _ = region.auto(screen)
    assert box == (20, 0, 80, 60) and (pixels == 120).all()
