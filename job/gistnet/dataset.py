"""From objects in a store to one uint8 image tensor on the training device.

Layout: ``<data>/<class>/<image>``, or a ``manifest.csv`` (``path,label[,patient_id]``)
at the data root. Every image is decoded once, converted to 3-channel 8-bit, resized
(shorter side) and centre-cropped to ``image_size``. Objects that cannot be used are
skipped and listed with the reason; problems with the data set as a whole raise
``DataError``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageOps

from gistnet.config import DataConfig
from gistnet.errors import DataError
from gistnet.storage import Store, is_safe_key

log = logging.getLogger(__name__)

# What the decoder accepts, by content (Pillow's format names; README's list): a GIF or WebP,
# whatever its name, is skipped as "not a recognised image".
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
# Names that look like images: such an object at the data root (outside any class folder) is
# listed in dataset.skipped; other root files (a README, synth.json) are only logged.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class Labeled:
    key: str
    label: int  # 1 positive (GIST), 0 negative (LM)
    patient_id: str = ""


@dataclass
class ImageSet:
    """Decoded images in one tensor; ``labels[i]`` is 1 for the positive class."""

    keys: list[str]
    images: torch.Tensor  # uint8, N x 3 x S x S
    labels: torch.Tensor  # int64, N
    patient_ids: list[str] = field(default_factory=list)

    def subset(self, keys: list[str]) -> "ImageSet":
        index = {k: i for i, k in enumerate(self.keys)}
        idx = torch.tensor([index[k] for k in keys], dtype=torch.long)
        return ImageSet(keys=list(keys), images=self.images[idx.to(self.images.device)],
                        labels=self.labels[idx.to(self.labels.device)],
                        patient_ids=[self.patient_ids[index[k]] for k in keys] if self.patient_ids else [])

    def counts(self, names: tuple[str, str]) -> dict[str, int]:
        return class_counts(self.labels, names)


def class_counts(labels: torch.Tensor, names: tuple[str, str]) -> dict[str, int]:
    """Images per class name; ``labels`` is 1 for ``names[0]`` (positive), 0 for ``names[1]``."""
    positives = int(labels.sum())
    return {names[0]: positives, names[1]: len(labels) - positives}


@dataclass
class LoadResult:
    images: ImageSet
    skipped: list[dict]


# ---------------------------------------------------------------- listing


def _read_manifest(store: Store, cfg: DataConfig) -> list[Labeled]:
    text = store.read(cfg.manifest).decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    names = {cfg.positive_class: 1, cfg.negative_class: 0}
    out = []
    for n, row in enumerate(rows, 2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise DataError(f"{store.uri_of(cfg.manifest)} line {n}: expected path,label[,patient_id]")
        label = row[1].strip()
        if label not in names:
            raise DataError(f"{store.uri_of(cfg.manifest)} line {n}: unknown label {label!r} "
                            f"(configured: {cfg.positive_class}, {cfg.negative_class})")
        out.append(Labeled(row[0].strip(), names[label], row[2].strip() if len(row) > 2 else ""))
    return out


def list_labeled(store: Store, cfg: DataConfig) -> tuple[list[Labeled], list[dict]]:
    """Labeled object keys, from the manifest if there is one, else from class folders;
    and the keys skipped as unsafe (absolute or with '..': never trusted as paths)."""
    keys = store.list()
    if not keys:
        raise DataError(f"no objects found under {store.uri} (empty or wrong prefix)")
    unsafe = [{"uri": f"{store.uri}/{k}", "reason": "unsafe object key (absolute or contains '..')"}
              for k in keys if not is_safe_key(k)]
    keys = [k for k in keys if is_safe_key(k)]
    if cfg.manifest in keys:
        labeled = _read_manifest(store, cfg)
        unsafe += [{"uri": f"{store.uri}/{lab.key}", "reason": "unsafe path in manifest (absolute or contains '..')"}
                   for lab in labeled if not is_safe_key(lab.key)]
        return [lab for lab in labeled if is_safe_key(lab.key)], unsafe
    names = {cfg.positive_class: 1, cfg.negative_class: 0}
    labeled = []
    for key in keys:
        folder, sep, rest = key.partition("/")
        if not sep:
            log.info("ignoring %s at the data root (not in a class folder)", store.uri_of(key))
            if key.lower().endswith(IMAGE_SUFFIXES):
                unsafe.append({"uri": store.uri_of(key), "reason": "image at the data root, not in a class folder"})
            continue
        if folder not in names:
            raise DataError(f"unknown class folder {folder!r} in {store.uri} "
                            f"(configured classes: {cfg.positive_class}, {cfg.negative_class})")
        labeled.append(Labeled(key, names[folder]))
    for name in names:
        if not any(lab.key.startswith(f"{name}/") for lab in labeled):
            raise DataError(f"class folder {name!r} is missing or empty in {store.uri}")
    return labeled, unsafe


# ---------------------------------------------------------------- decoding


def _to_rgb8(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit grayscale: stretch the used range to 8 bits.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def decode_image(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Bytes -> uint8 HxWx3 array, resized and centre-cropped to size x size."""
    if not data:
        raise ValueError("empty object (0 bytes)")
    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
                if img.width * img.height > max_pixels:
                    raise ValueError(f"image of {img.width}x{img.height} pixels exceeds data.max_image_pixels={max_pixels}")
                img.load()
                img = _to_rgb8(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ValueError(f"decompression bomb guard: {exc}") from None
        except Image.UnidentifiedImageError:
            raise ValueError("not a recognised image (PNG, JPEG, BMP or TIFF)") from None
        except OSError as exc:
            raise ValueError(f"corrupt or truncated image ({exc})") from None
    img = ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def decode_all(raw: dict[str, bytes | Exception], labeled: list[Labeled], size: int, max_pixels: int,
               threads: int, on_done=None) -> tuple[list[Labeled], list[np.ndarray], list[dict]]:
    """Decode in parallel; drop undecodable objects and same-class duplicates, fail on cross-class ones."""

    def work(item: Labeled):
        value = raw[item.key]
        if isinstance(value, Exception):
            return item, None, f"could not be read: {type(value).__name__}: {value}", None
        try:
            return item, decode_image(value, size, max_pixels), None, hashlib.sha256(value).hexdigest()
        except ValueError as exc:
            return item, None, str(exc), None

    kept, arrays, skipped, seen = [], [], [], {}
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for n, (item, array, reason, digest) in enumerate(pool.map(work, labeled), 1):
            if on_done:
                on_done(n)
            if reason:
                skipped.append({"key": item.key, "reason": reason})
                continue
            if digest in seen:
                first = seen[digest]
                if first.label != item.label:
                    raise DataError(f"the same image is labeled both classes: {first.key} and {item.key}")
                skipped.append({"key": item.key, "reason": f"duplicate of {first.key} (same bytes)"})
                continue
            seen[digest] = item
            kept.append(item)
            arrays.append(array)
    return kept, arrays, skipped


def _progress(verb: str, total: int):
    """A callback logging every 10% of a long transfer."""
    step = max(1, total // 10)

    def on_done(n: int) -> None:
        if total >= 100 and (n % step == 0 or n == total):
            log.info("%s %d/%d images", verb, n, total)

    return on_done


def load_images(store: Store, cfg: DataConfig, device: torch.device, on_stage=None) -> LoadResult:
    """Download and decode the whole data set into one uint8 tensor on ``device``.

    ``on_stage(name, seconds, count)`` is called after the download and decode stages.
    """
    import time

    labeled, unsafe = list_labeled(store, cfg)
    log.info("downloading %d images from %s with %d threads", len(labeled), store.uri, cfg.download_threads)
    start = time.perf_counter()
    raw = store.read_many([lab.key for lab in labeled], cfg.download_threads, _progress("downloaded", len(labeled)))
    if on_stage:
        on_stage("download", time.perf_counter() - start, len(labeled))
    start = time.perf_counter()
    kept, arrays, skipped = decode_all(raw, labeled, cfg.image_size, cfg.max_image_pixels, cfg.download_threads)
    if on_stage:
        on_stage("decode", time.perf_counter() - start, len(kept))
    skipped = unsafe + [{"uri": store.uri_of(s["key"]), "reason": s["reason"]} for s in skipped]
    for s in skipped:
        log.warning("skipped %s: %s", s["uri"], s["reason"])
    for label, name in ((1, cfg.positive_class), (0, cfg.negative_class)):
        n = sum(1 for k in kept if k.label == label)
        if n < cfg.min_images_per_class:
            raise DataError(f"class {name!r} has {n} usable images in {store.uri}; "
                            f"at least data.min_images_per_class={cfg.min_images_per_class} are needed")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([k.label for k in kept], dtype=torch.long)
    return LoadResult(ImageSet([k.key for k in kept], images.to(device), labels.to(device),
                               [k.patient_id for k in kept]), skipped)
