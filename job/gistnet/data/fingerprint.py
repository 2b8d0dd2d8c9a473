"""The content hash of an image as the model sees it, and the run's record of its development images.

(Written on the ``external`` branch with the interface the ``evidence-b`` branch owns; the
integrator keeps that branch's module.)

``pixel_digest`` is sha256 over the shape as text ("HxWxC" or "HxW") and the raw bytes of the
decoded, resized uint8 pixels (``dataset.decode_image``'s output), so a re-encoded or renamed
copy of an image has the same digest while its file bytes differ. A run stores its
development images' digests as ``fingerprints.json`` at the run root:
``{"method": ..., "image_size": N, "images": {key: digest}}``.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

FINGERPRINTS = "fingerprints.json"
METHOD = "sha256 of decoded resized uint8 pixels"


def pixel_digest(pixels: np.ndarray) -> str:
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    shape = "x".join(str(d) for d in pixels.shape)
    return hashlib.sha256(shape.encode() + pixels.tobytes()).hexdigest()


def read_fingerprints(store) -> dict[str, str]:
    """{digest: key} of the run's development images; {} when the run has no fingerprints.json."""
    try:
        saved = json.loads(store.read(FINGERPRINTS))
    except FileNotFoundError:
        return {}
    return {digest: key for key, digest in saved.get("images", {}).items()}
