"""A content hash of an image as the model sees it, and the run's record of its development images.

``pixel_digest`` hashes the decoded, resized uint8 pixels (``dataset.decode_pixels``'s output),
not the file's bytes: a PNG re-saved with other compression, or converted to BMP or TIFF, decodes
to the same pixels and so has the same digest; a byte hash would miss it. A lossy re-encoding
(JPEG) changes the pixels and is not caught; neither is a crop or a resize before upload.

Each run stores the digests of its development images (training and validation: validation
chose the epoch and the best model) as ``fingerprints.json`` at the run root, written by the
process that writes ``dataset.json``. ``predict`` (and any later evaluation or overlap check)
reads them back with ``read_fingerprints`` to recognise those images under any file name.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from gistnet.errors import ModelError

FILENAME = "fingerprints.json"
METHOD = "sha256 of decoded resized uint8 pixels"


def pixel_digest(pixels: np.ndarray) -> str:
    """sha256 hex over the shape as text ("HxW" or "HxWxC") followed by the raw bytes of ``pixels``,
    a uint8 H x W (gray) or H x W x C array.

    A gray image is hashed as H x W however it is held: H x W x 1, or H x W x 3 with three equal
    channels (``dataset.decode_image``'s form of it) give the digest of its H x W array, so the
    loader's and the scorer's forms of one image agree.
    """
    array = np.asarray(pixels)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"pixel_digest takes a uint8 HxW or HxWxC array, not {array.dtype} {array.shape}")
    if array.ndim == 3 and (array.shape[2] == 1 or (
            array.shape[2] == 3 and (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all())):
        array = array[..., 0]
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256("x".join(str(n) for n in array.shape).encode("ascii"))
    digest.update(array)  # the buffer itself: no copy, and hashlib releases the GIL while it hashes
    return digest.hexdigest()


def document(images: dict[str, str], image_size: int, patients=None, key_check: str | None = None) -> dict:
    """The ``fingerprints.json`` object for ``images`` (key -> digest) and, when the data has patient ids,
    the development ``patients`` (pseudonymised ids) with ``key_check``, the run's key's check value
    (``Pseudonymizer.check``; an evaluation compares patients only when its key gives the same)."""
    doc = {"method": METHOD, "image_size": int(image_size), "images": dict(sorted(images.items()))}
    if patients is not None:
        doc.update(patients=sorted({p for p in patients if p}), key_check=key_check)
    return doc


def read_patients(store) -> tuple[set[str] | None, str | None]:
    """(development patients' pseudonymised ids, key_check) from the run's fingerprints.json;
    (None, None) when it records none (no patient ids, or a run from before they were recorded)."""
    saved = json.loads(store.read(FILENAME))
    if not isinstance(saved.get("patients"), list):
        return None, None
    return set(saved["patients"]), saved.get("key_check")


def read_fingerprints(store) -> dict[str, str]:
    """digest -> key of the development images recorded at the root of the run ``store``.

    FileNotFoundError when the run has none (trained before gistnet recorded them);
    ModelError naming the file when it is not a fingerprints document.
    """
    where = store.uri_of(FILENAME)
    try:
        saved = json.loads(store.read(FILENAME))
    except ValueError:
        raise ModelError(f"{where} is not valid JSON") from None
    if not isinstance(saved, dict) or saved.get("method") != METHOD or not isinstance(saved.get("images"), dict):
        raise ModelError(f"{where}: not a gistnet fingerprints document (expected method {METHOD!r} and images)")
    return {digest: key for key, digest in saved["images"].items()}

