"""The content hash of an image as the model sees it: computed by hand here, equal across lossless
re-encodings that change every byte, recorded by the loader for every kept image."""

import hashlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from gistnet.config import DataConfig
from gistnet.data import dataset, fingerprint
from gistnet.data.storage import LocalStore
from gistnet.errors import ModelError


def encode(array: np.ndarray, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **save)
    return buf.getvalue()


def lesion(seed: int, size: int = 48, colour: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (size, size + 9, 3) if colour else (size, size + 9)  # not square: decoding crops and resizes
    return (rng.random(shape) * 255).astype(np.uint8)


def test_pixel_digest_is_sha256_of_the_shape_text_and_the_raw_bytes():
    gray = lesion(0, 8)[:, :8]
    assert fingerprint.pixel_digest(gray) == hashlib.sha256(b"8x8" + gray.tobytes()).hexdigest()
    colour = lesion(1, 8, colour=True)[:, :8]
    assert fingerprint.pixel_digest(colour) == hashlib.sha256(b"8x8x3" + colour.tobytes()).hexdigest()
    # the same bytes in another shape are another image
    assert fingerprint.pixel_digest(gray.reshape(4, 16)) != fingerprint.pixel_digest(gray)
    # a gray image held as three equal channels (decode_image's form) or one is the same image
    assert fingerprint.pixel_digest(np.repeat(gray[..., None], 3, axis=2)) == fingerprint.pixel_digest(gray)
    assert fingerprint.pixel_digest(gray[..., None]) == fingerprint.pixel_digest(gray)
    with pytest.raises(ValueError, match="uint8"):
        fingerprint.pixel_digest(gray.astype(np.float32))


@pytest.mark.parametrize("colour", [False, True])
def test_a_lossless_re_encoding_changes_every_byte_but_not_the_digest(colour):
    pixels = lesion(2, colour=colour)
    original = encode(pixels, "PNG", compress_level=9)
    copies = {"png, other compression": encode(pixels, "PNG", compress_level=1),
              "bmp": encode(pixels, "BMP"), "tiff": encode(pixels, "TIFF")}
    digest = fingerprint.pixel_digest(dataset.decode_pixels(original, 32, 10**8))
    for name, data in copies.items():
        assert hashlib.sha256(data).digest() != hashlib.sha256(original).digest(), name  # a byte hash misses it
        assert fingerprint.pixel_digest(dataset.decode_pixels(data, 32, 10**8)) == digest, name
        # the scorer's form (decode_image: always three channels) gives the same digest
        assert fingerprint.pixel_digest(dataset.decode_image(data, 32, 10**8)) == digest, name
    # other pixels, other digest; and a lossy JPEG copy changes the pixels (documented as not caught)
    assert fingerprint.pixel_digest(dataset.decode_pixels(encode(lesion(3, colour=colour), "PNG"), 32, 10**8)) != digest
    jpeg = encode(pixels, "JPEG", quality=90)
    assert fingerprint.pixel_digest(dataset.decode_pixels(jpeg, 32, 10**8)) != digest


def test_the_loader_records_the_digest_of_every_kept_image(tmp_path):
    store = LocalStore(tmp_path / "data")
    for label in ("GIST", "LM"):
        for i in range(3):
            store.write_bytes(f"{label}/{i}.png", encode(lesion(10 * i + len(label), colour=i == 0), "PNG"))
    store.write_bytes("LM/broken.png", b"not a png")
    store.write_bytes("LM/again.png", store.read("LM/1.png"))  # a same-class duplicate: skipped
    loaded = dataset.load_images(store, DataConfig(image_size=32, min_images_per_class=2), torch.device("cpu"))
    assert sorted(loaded.fingerprints) == sorted(loaded.images.keys) and len(loaded.images.keys) == 6
    for key, digest in loaded.fingerprints.items():  # independently: decode the file again, hash by hand
        pixels = dataset.decode_pixels(store.read(key), 32, 10**8)
        shape = "x".join(map(str, pixels.shape)).encode()
        assert digest == hashlib.sha256(shape + pixels.tobytes()).hexdigest(), key


def test_read_fingerprints_maps_digest_to_key_and_names_a_bad_file(tmp_path):
    run = LocalStore(tmp_path / "run")
    with pytest.raises(FileNotFoundError):
        fingerprint.read_fingerprints(run)
    run.write_bytes(fingerprint.FILENAME, json.dumps(fingerprint.document({"b.png": "d2", "a.png": "d1"}, 32)).encode())
    saved = json.loads(run.read(fingerprint.FILENAME))
    assert saved == {"method": "sha256 of decoded resized uint8 pixels", "image_size": 32,
                     "images": {"a.png": "d1", "b.png": "d2"}}
    assert fingerprint.read_fingerprints(run) == {"d1": "a.png", "d2": "b.png"}
    run.write_bytes(fingerprint.FILENAME, b'{"images": []}')
    with pytest.raises(ModelError, match="fingerprints.json: not a gistnet fingerprints document"):
        fingerprint.read_fingerprints(run)
