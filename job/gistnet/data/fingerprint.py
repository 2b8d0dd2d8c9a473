"""The content hash of an image as the model sees it: sha256 over the shape and the bytes of the
decoded, resized uint8 pixels. Two files with different bytes (re-encoded, renamed, another
format) but the same pixels share it. A run stores its development images' digests as
``fingerprints.json`` at the run root.

(Interface shared with the evidence-b branch, which owns this module; written here to the same
signatures for the promotion gate.)
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from gistnet.data.storage import Store

FILENAME = "fingerprints.json"
METHOD = "sha256 of decoded resized uint8 pixels"


def pixel_digest(pixels: np.ndarray) -> str:
    """sha256 hex over the shape as text ("HxWxC" or "HxW") and the raw bytes of uint8 pixels."""
    array = np.ascontiguousarray(pixels, dtype=np.uint8)
    h = hashlib.sha256("x".join(str(d) for d in array.shape).encode())
    h.update(array.tobytes())
    return h.hexdigest()


def read_fingerprints(store: Store) -> dict[str, str]:
    """digest -> key of the run's development images, from its ``fingerprints.json``."""
    document = json.loads(store.read(FILENAME))
    return {digest: key for key, digest in document["images"].items()}
