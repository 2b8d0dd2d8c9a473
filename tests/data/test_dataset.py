import hashlib
import io
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from gistnet.data import dataset
from gistnet.config import DataConfig
from gistnet.errors import DataError, StorageError
from gistnet.data.storage import LocalStore
from tests.conftest import loader_threads


def png(array, mode=None, fmt="PNG", **save):
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format=fmt, **save)
    return buf.getvalue()


def gray(seed, size=40):
    return (np.random.default_rng(seed).random((size, size)) * 255).astype(np.uint8)


def make_store(tmp_path, n=6, extra=None):
    store = LocalStore(tmp_path / "data")
    for label in ("GIST", "LM"):
        for i in range(n):
            store.write_bytes(f"{label}/{i}.png", png(gray(zlib.crc32(f"{label}/{i}".encode()))))
    for key, data in (extra or {}).items():
        store.write_bytes(key, data)
    return store


def test_formats_and_modes_decode_to_rgb8():
    arr = gray(1, 50)
    rgb = np.stack([arr] * 3, -1)
    cases = {
        "png-gray": png(arr), "jpeg": png(rgb, fmt="JPEG"), "bmp": png(rgb, fmt="BMP"), "tiff": png(arr, fmt="TIFF"),
        "rgba": png(np.dstack([rgb, np.full_like(arr, 255)])),
    }
    buf = io.BytesIO()
    Image.fromarray(arr).convert("P").save(buf, format="PNG")
    cases["palette"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG")
    cases["cmyk"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint16) * 257).save(buf, format="PNG")
    cases["16-bit"] = buf.getvalue()
    for name, data in cases.items():
        out = dataset.decode_image(data, 32, 10**8)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8, name
        assert out.std() > 5, name


@pytest.mark.parametrize("data, reason", [
    (b"", "empty object"),
    (b"this is a text file", "not a recognised image"),
])
def test_unusable_bytes(data, reason):
    with pytest.raises(ValueError, match=reason):
        dataset.decode_image(data, 32, 10**8)


def test_truncated_and_bomb():
    data = png(gray(2, 64))
    with pytest.raises(ValueError, match="corrupt or truncated"):
        dataset.decode_image(data[: len(data) // 2], 32, 10**8)
    with pytest.raises(ValueError, match="max_image_pixels|decompression bomb"):
        dataset.decode_image(data, 32, 100)


def test_load_skips_bad_objects_and_reports_them(tmp_path):
    store = make_store(tmp_path, extra={"GIST/empty.png": b"", "LM/notes.txt": b"hello", "README.md": b"x"})
    result = dataset.load_images(store, DataConfig(image_size=32, min_images_per_class=2), torch.device("cpu"))
    assert result.images.images.shape == (12, 1, 32, 32)  # every image is grayscale: one channel
    assert result.images.images.dtype == torch.uint8
    reasons = {s["uri"].rsplit("/", 2)[-2] + "/" + s["uri"].rsplit("/", 1)[-1]: s["reason"] for s in result.skipped}
    assert "empty object" in reasons["GIST/empty.png"]
    assert "not a recognised image" in reasons["LM/notes.txt"]


def test_duplicates(tmp_path):
    same = png(gray(99))
    store = make_store(tmp_path, extra={"GIST/dup1.png": same, "GIST/dup2.png": same})
    result = dataset.load_images(store, DataConfig(image_size=32), torch.device("cpu"))
    assert any("duplicate of GIST/dup1.png" in s["reason"] for s in result.skipped)
    make_store(tmp_path, extra={"LM/dup3.png": same})
    with pytest.raises(DataError, match="labeled both classes"):
        dataset.load_images(store, DataConfig(image_size=32), torch.device("cpu"))


@pytest.mark.parametrize("extra, message", [
    ({"OTHER/x.png": b"1"}, "unknown class folder 'OTHER'"),
])
def test_dataset_level_errors(tmp_path, extra, message):
    store = make_store(tmp_path, extra=extra)
    with pytest.raises(DataError, match=message):
        dataset.load_images(store, DataConfig(image_size=32), torch.device("cpu"))


def test_missing_class_and_too_few_and_empty(tmp_path):
    store = LocalStore(tmp_path / "d")
    with pytest.raises(DataError, match="no objects found"):
        dataset.list_labeled(store, DataConfig())
    store.write_bytes("GIST/a.png", png(gray(1)))
    with pytest.raises(DataError, match="class folder 'LM' is missing"):
        dataset.list_labeled(store, DataConfig())
    with pytest.raises(DataError, match=re.escape("d/GIST/a.png is a file: the data is a folder (or S3 prefix)")):
        dataset.list_labeled(LocalStore(tmp_path / "d" / "GIST" / "a.png"), DataConfig())
    store.write_bytes("LM/a.png", png(gray(2)))
    with pytest.raises(DataError, match="class 'GIST' has 1 usable images"):
        dataset.load_images(store, DataConfig(image_size=32), torch.device("cpu"))


def test_manifest_with_patients(tmp_path):
    store = LocalStore(tmp_path / "d")
    rows = ["path,label,patient_id"]
    for i in range(20):
        label = "GIST" if i % 2 else "LM"
        store.write_bytes(f"img/{i}.png", png(gray(i)))
        rows.append(f"img/{i}.png,{label},p{i // 2}")
    store.write_bytes("manifest.csv", "\n".join(rows).encode())
    result = dataset.load_images(store, DataConfig(image_size=32, min_images_per_class=2), torch.device("cpu"))
    patient = dict(zip(result.images.keys, result.images.patient_ids))
    # Grouped as the manifest says (10 patients, 2 images each), but only pseudonyms come out.
    assert patient["img/3.png"] == patient["img/2.png"] != patient["img/4.png"] and len(set(patient.values())) == 10
    assert all(p.startswith("p-") and p not in {f"p{i}" for i in range(10)} for p in patient.values())


def test_test_data_seeds_are_deterministic(tmp_path):
    """Seeds come from crc32 of the key, never Python's per-process salted string hash: the same
    bytes in every run, and no two test images alike."""
    pattern = re.compile(r"(?<![\w.])" + "hash" + r"\(")
    offenders = [f"{p.name}:{n}" for p in Path(__file__).parents[1].rglob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
    first = {k: hashlib.sha256(v).hexdigest() for k, v in _store_bytes(make_store(tmp_path / "a")).items()}
    assert first == {k: hashlib.sha256(v).hexdigest() for k, v in _store_bytes(make_store(tmp_path / "b")).items()}
    assert len(set(first.values())) == 12


def _store_bytes(store):
    return {k: store.read(k) for k in store.list()}


def test_image_at_the_data_root_is_skipped_and_listed(tmp_path):
    store = make_store(tmp_path, extra={"stray.png": png(gray(5)), "synth.json": b"{}", "README.md": b"x"})
    labeled, skipped = dataset.list_labeled(store, DataConfig())
    assert [s["reason"] for s in skipped] == ["image at the data root, not in a class folder"]
    assert skipped[0]["uri"].endswith("/stray.png")
    assert len(labeled) == 12


def test_only_the_documented_formats_are_decoded():
    """docs/data.md: PNG, JPEG, BMP and TIFF, by content; a GIF or WebP is not recognised, whatever its name."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "data.md").read_text()
    assert "PNG, JPEG, BMP and TIFF" in page and dataset.IMAGE_FORMATS == ("PNG", "JPEG", "BMP", "TIFF")
    for fmt in ("GIF", "WEBP"):
        with pytest.raises(ValueError, match="not a recognised image"):
            dataset.decode_image(png(gray(3), fmt=fmt), 32, 10**8)


def test_gray_images_decode_as_one_channel_equal_to_the_rgb_path():
    data = png(gray(5, 50))
    reference = np.asarray(ImageOps.fit(Image.open(io.BytesIO(data)).convert("RGB"), (32, 32),
                                        method=Image.Resampling.BICUBIC))
    pixels = dataset.decode_pixels(data, 32, 10**8, roi_mode="none")  # noise has "background": no auto crop
    assert pixels.shape == (32, 32)
    assert np.array_equal(np.repeat(pixels[..., None], 3, axis=2), reference)
    equal_channels = png(np.stack([gray(6, 50)] * 3, -1))  # RGB file, gray content
    assert dataset.decode_pixels(equal_channels, 32, 10**8).shape == (32, 32)


def test_one_colour_image_widens_the_tensor_and_keeps_gray_rows(tmp_path):
    colour = (np.random.default_rng(7).random((40, 40, 3)) * 255).astype(np.uint8)
    store = make_store(tmp_path, n=4, extra={"GIST/2-colour.png": png(colour)})
    result = dataset.load_images(store, DataConfig(image_size=32, min_images_per_class=2, download_threads=3),
                                 torch.device("cpu"))
    images = result.images
    assert images.images.shape == (9, 3, 32, 32)
    for key, row in zip(images.keys, images.images):
        expected = dataset.decode_image(store.read(key), 32, 10**8)
        assert torch.equal(row, torch.from_numpy(expected).permute(2, 0, 1)), key


def test_skipped_rows_are_compacted_in_listing_order(tmp_path):
    store = make_store(tmp_path, n=4, extra={"GIST/0a-bad.png": b"junk", "LM/0a-bad.png": b""})
    result = dataset.load_images(store, DataConfig(image_size=32, min_images_per_class=2, download_threads=4),
                                 torch.device("cpu"))
    assert result.images.keys == sorted(result.images.keys) and len(result.images.keys) == 8
    for key, row in zip(result.images.keys, result.images.images):
        assert torch.equal(row[0], torch.from_numpy(dataset.decode_pixels(store.read(key), 32, 10**8))), key


def test_a_storage_error_while_loading_ends_the_load(tmp_path):
    class Failing(LocalStore):
        def read(self, key):
            if key == "LM/2.png":
                raise StorageError("bucket 'eus' denied the read of LM/2.png")
            return super().read(key)

    store = make_store(tmp_path)
    failing = Failing(store.root)
    with pytest.raises(StorageError, match="denied"):
        dataset.load_images(failing, DataConfig(image_size=32, min_images_per_class=2, download_threads=4),
                            torch.device("cpu"))
    assert not loader_threads()


def test_manifest_with_a_header_gives_sites_and_covariates(tmp_path):
    store = LocalStore(tmp_path / "d")
    rows = ["path,label,patient_id,site,sex"]
    for i in range(6):
        for cls in ("GIST", "LM"):
            key = f"img/{cls}_{i}.png"
            store.write_bytes(key, png(gray(zlib.crc32(key.encode()))))
            rows.append(f"{key},{cls},P{i}{cls},site{i % 3},{'F' if i % 2 else ''}")
    store.write_bytes("manifest.csv", "\n".join(rows).encode())
    loaded = dataset.load_images(store, DataConfig(image_size=32), torch.device("cpu"))
    by_key = dict(zip(loaded.images.keys, zip(loaded.images.sites, loaded.images.covariates)))
    assert by_key["img/GIST_1.png"] == ("site1", {"sex": "F"})
    assert by_key["img/LM_2.png"] == ("site2", {"sex": ""})
    sub = loaded.images.subset(["img/LM_2.png"])
    assert sub.sites == ["site2"] and sub.covariates == [{"sex": ""}]


def test_manifest_unknown_labels_are_named_together(tmp_path):
    store = LocalStore(tmp_path / "d")
    store.write_bytes("x.png", png(gray(1)))
    store.write_bytes("manifest.csv", b"path,label\nx.png,Schwannoma\ny.png,GIST\nz.png,Lipoma\n")
    with pytest.raises(DataError, match=r"unknown label\(s\) 'Lipoma', 'Schwannoma'"):
        dataset.load_images(store, DataConfig(image_size=32), torch.device("cpu"))
