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
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageOps

from gistnet.config import DataConfig
from gistnet.errors import DataError, StorageError
from gistnet.data.lineage import Lineage, relative_key
from gistnet.data.storage import Store, is_safe_key

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
    lineage: Lineage | None = None  # what was read: (size, sha256) per kept key, and the skipped keys


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


def _listed(store: Store) -> tuple[list[str], list[dict]]:
    """Every object key, and the keys skipped as unsafe (absolute or with '..': never trusted as paths)."""
    keys = store.list()
    if not keys:
        raise DataError(f"no objects found under {store.uri} (empty or wrong prefix)")
    unsafe = [{"uri": f"{store.uri}/{k}", "reason": "unsafe object key (absolute or contains '..')"}
              for k in keys if not is_safe_key(k)]
    return [k for k in keys if is_safe_key(k)], unsafe


def list_labeled(store: Store, cfg: DataConfig) -> tuple[list[Labeled], list[dict]]:
    """Labeled object keys, from the manifest if there is one, else from class folders;
    and the keys skipped as unsafe (absolute or with '..': never trusted as paths)."""
    keys, unsafe = _listed(store)
    return _labeled(store, keys, unsafe, cfg, require_both_classes=True)


def list_for_scoring(store: Store, cfg: DataConfig) -> tuple[list[Labeled], list[dict], bool]:
    """Objects to score, the unsafe keys, and whether they are labeled. Labeled when there is a
    manifest or class folders (one class is enough); otherwise every object is scored, with
    ``label`` -1."""
    keys, unsafe = _listed(store)
    names = (cfg.positive_class, cfg.negative_class)
    if cfg.manifest in keys or any(k.partition("/")[0] in names and "/" in k for k in keys):
        labeled, unsafe = _labeled(store, keys, unsafe, cfg, require_both_classes=False)
        return labeled, unsafe, True
    return [Labeled(k, -1) for k in keys], unsafe, False


def _labeled(store: Store, keys: list[str], unsafe: list[dict], cfg: DataConfig,
             require_both_classes: bool) -> tuple[list[Labeled], list[dict]]:
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
    present = [name for name in names if any(lab.key.startswith(f"{name}/") for lab in labeled)]
    for name in names:
        if name not in present and (require_both_classes or not present):
            raise DataError(f"class folder {name!r} is missing or empty in {store.uri}")
    return labeled, unsafe


# ---------------------------------------------------------------- decoding


def _to_8bit(img: Image.Image) -> Image.Image:
    """Any PIL mode -> ``L`` (single-channel modes) or ``RGB`` (the rest), 8 bits."""
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
    return img.convert("L") if img.mode in ("L", "1") else img.convert("RGB")


def decode_pixels(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Bytes -> uint8 array resized and centre-cropped to size x size: HxW when the image is
    grayscale (a single-channel mode, or RGB with three equal channels), else HxWx3."""
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
                img = _to_8bit(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ValueError(f"decompression bomb guard: {exc}") from None
        except Image.UnidentifiedImageError:
            raise ValueError("not a recognised image (PNG, JPEG, BMP or TIFF)") from None
        except OSError as exc:
            raise ValueError(f"corrupt or truncated image ({exc})") from None
    # PIL resizes each 8-bit channel alike, so a gray image resized as L equals it resized as RGB.
    array = np.array(ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC), dtype=np.uint8)  # writable
    if array.ndim == 3 and (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all():
        return array[..., 0]
    return array


def decode_image(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Bytes -> uint8 HxWx3 array, resized and centre-cropped to size x size."""
    array = decode_pixels(data, size, max_pixels)
    return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array


class Canvas:
    """One preallocated uint8 N x C x S x S array that decoding threads write into.

    It starts with one channel and widens to three at the first colour image, so a
    grayscale data set (the EUS case) is held as one channel. ``np.empty`` leaves the
    pages untouched, so rows not yet written cost no resident memory. (Writes go through
    numpy: a row copy through torch's indexing costs milliseconds, numpy's microseconds.)
    """

    def __init__(self, n: int, size: int):
        self.array = np.empty((n, 1, size, size), dtype=np.uint8)
        self.written = np.zeros(n, dtype=bool)
        self._lock = threading.Lock()

    def put(self, row: int, pixels: np.ndarray) -> None:
        """``pixels``: HxW (gray) or HxWx3."""
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        with self._lock:  # widening swaps the array: no write may land in the old one
            if pixels.shape[0] == 3 and self.array.shape[1] == 1:
                self._widen()
            self.array[row] = pixels  # a gray image in a 3-channel array broadcasts
            self.written[row] = True

    def _widen(self) -> None:
        wide = np.empty((self.array.shape[0], 3, *self.array.shape[2:]), dtype=np.uint8)
        for start, end in _runs(self.written):  # copy (and touch) only the rows written so far
            wide[start:end] = self.array[start:end]
        self.array = wide

    def compact(self, rows: list[int]) -> torch.Tensor:
        """Keep ``rows`` (ascending), moved down in place: no second full-size array."""
        for target, source in enumerate(rows):
            if target != source:
                self.array[target] = self.array[source]
        return torch.from_numpy(self.array[:len(rows)])


def _runs(flags: np.ndarray):
    """(start, end) of each run of True in a boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
    return zip(edges[::2].tolist(), edges[1::2].tolist())


def load_into_tensor(store: Store, labeled: list[Labeled], size: int, max_pixels: int, threads: int,
                     on_done=None, lineage: Lineage | None = None) -> tuple[list[Labeled], torch.Tensor, list[dict]]:
    """Read and decode each object in a worker thread straight into its row of one
    preallocated tensor; its bytes are dropped as soon as it is decoded, so at most
    ``threads`` objects are held at once. Drops undecodable objects and same-class
    duplicates (the first in listing order is kept), fails on cross-class ones. ``lineage``, when
    given, receives the size and sha256 of each kept object and the keys skipped."""
    canvas = Canvas(len(labeled), size)

    def work(row: int) -> tuple[str | None, str | None, int]:
        item = labeled[row]
        try:
            data = store.read(item.key)
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported per object
            return f"could not be read: {type(exc).__name__}: {exc}", None, 0
        try:
            canvas.put(row, decode_pixels(data, size, max_pixels))
        except ValueError as exc:
            return str(exc), None, len(data)
        return None, hashlib.sha256(data).hexdigest(), len(data)

    outcomes = []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for n, outcome in enumerate(pool.map(work, range(len(labeled))), 1):
            outcomes.append(outcome)
            if on_done:
                on_done(n)
    kept_rows, skipped, seen = [], [], {}
    for row, (reason, digest, nbytes) in enumerate(outcomes):
        if _keep(labeled[row], reason, digest, seen, skipped):
            kept_rows.append(row)
            if lineage is not None:
                lineage.objects[labeled[row].key] = (nbytes, digest)
    if lineage is not None:
        lineage.skipped += [s["key"] for s in skipped]
    return [labeled[r] for r in kept_rows], canvas.compact(kept_rows), skipped


def _keep(item: Labeled, reason: str | None, digest: str | None, seen: dict, skipped: list,
          dedupe: bool = True) -> bool:
    """Whether a decoded object joins the set: not when it failed (listed with ``reason``) or,
    with ``dedupe``, when it repeats an earlier object's bytes (listed as a duplicate; an error
    when the two are labeled differently)."""
    if reason:
        skipped.append({"key": item.key, "reason": reason})
        return False
    if dedupe and digest in seen:
        first = seen[digest]
        if first.label != item.label:
            raise DataError(f"the same image is labeled both classes: {first.key} and {item.key}")
        skipped.append({"key": item.key, "reason": f"duplicate of {first.key} (same bytes)"})
        return False
    seen[digest] = item
    return True


def decode_all(raw: dict[str, bytes | Exception], labeled: list[Labeled], size: int, max_pixels: int,
               threads: int, on_done=None, dedupe: bool = True) -> tuple[list[Labeled], list[np.ndarray], list[dict]]:
    """Decode in parallel; drop undecodable objects and same-class duplicates, fail on cross-class
    ones. ``dedupe=False`` (scoring) keeps duplicates: every object gets its own prediction."""

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
            if _keep(item, reason, digest, seen, skipped, dedupe):
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
    """Download and decode the whole data set into one uint8 tensor on ``device``
    (N x 1 x S x S when every image is grayscale, else N x 3 x S x S).

    ``on_stage(name, seconds, count)`` is called after the load (download and decode overlap).
    """
    import time

    labeled, unsafe = list_labeled(store, cfg)
    log.info("loading %d images from %s with %d threads", len(labeled), store.uri, cfg.download_threads)
    start = time.perf_counter()
    lineage = Lineage(skipped=[relative_key(store, s["uri"]) for s in unsafe])
    kept, images, skipped = load_into_tensor(store, labeled, cfg.image_size, cfg.max_image_pixels,
                                             cfg.download_threads, _progress("loaded", len(labeled)), lineage)
    if on_stage:
        on_stage("load", time.perf_counter() - start, len(kept))
    skipped = unsafe + [{"uri": store.uri_of(s["key"]), "reason": s["reason"]} for s in skipped]
    for s in skipped:
        log.warning("skipped %s: %s", s["uri"], s["reason"])
    for label, name in ((1, cfg.positive_class), (0, cfg.negative_class)):
        n = sum(1 for k in kept if k.label == label)
        if n < cfg.min_images_per_class:
            raise DataError(f"class {name!r} has {n} usable images in {store.uri}; "
                            f"at least data.min_images_per_class={cfg.min_images_per_class} are needed")
    labels = torch.tensor([k.label for k in kept], dtype=torch.long)
    return LoadResult(ImageSet([k.key for k in kept], images.to(device), labels.to(device),
                               [k.patient_id for k in kept]), skipped, lineage)
