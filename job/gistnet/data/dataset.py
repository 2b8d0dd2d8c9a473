"""From objects in a store to one uint8 image tensor on the training device.

Layout: ``<data>/<class>/<image>``, or a ``manifest.csv`` (``manifest.read_manifest``) at the
data root. Images are PNG, JPEG, BMP, TIFF or DICOM (``dicom``), recognised by content. Every
image is decoded once, cut to its region of interest (``region``), converted to 8 bits, resized
(shorter side) and centre-cropped to ``image_size``. Patient ids (the manifest's, else a
DICOM's PatientID) are replaced by pseudonyms (``privacy``) as they are loaded. Objects that cannot be used are
skipped and listed with the reason; problems with the data set as a whole raise
``DataError``.
"""

from __future__ import annotations

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
from gistnet.data.fingerprint import pixel_digest
from gistnet.data.reading import decode_threads, read_then_decode
from gistnet.data import dicom, region
from gistnet.data import privacy
from gistnet.data.privacy import Pseudonymizer
from gistnet.data.lineage import Lineage, relative_key
from gistnet.data.storage import Store
from gistnet.data.listing import IMAGE_SUFFIXES, Labeled, list_for_scoring, list_labeled  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

# What the decoder accepts, by content (Pillow's format names; docs/data.md's list): a GIF or WebP,
# whatever its name, is skipped as "not a recognised image".
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")


@dataclass
class ImageSet:
    """Decoded images in one tensor; ``labels[i]`` is the class index in ``data.head_classes``
    (``config.head_order``: with two classes 1 for the positive class, 0 for the negative)."""

    keys: list[str]
    images: torch.Tensor  # uint8, N x 3 x S x S
    labels: torch.Tensor  # int64, N
    patient_ids: list[str] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)  # manifest.csv's site column ("" where none)
    covariates: list[dict[str, str]] = field(default_factory=list)
    withheld: str = ""  # why figures of these pixels may not be published (region.withheld); "" when they may
    lesion_ids: list[str] = field(default_factory=list)  # manifest.csv's lesion_id, pseudonymized ("" where none)

    def subset(self, keys: list[str]) -> "ImageSet":
        index = {k: i for i, k in enumerate(self.keys)}
        idx = torch.tensor([index[k] for k in keys], dtype=torch.long)

        def pick(values: list) -> list:
            return [values[index[k]] for k in keys] if values else []

        return ImageSet(keys=list(keys), images=self.images[idx.to(self.images.device)],
                        labels=self.labels[idx.to(self.labels.device)], patient_ids=pick(self.patient_ids),
                        sites=pick(self.sites), covariates=pick(self.covariates), withheld=self.withheld,
                        lesion_ids=pick(self.lesion_ids))

    def counts(self, head: tuple[str, ...]) -> dict[str, int]:
        return class_counts(self.labels, head)


def class_counts(labels, head: tuple[str, ...]) -> dict[str, int]:
    """Images per class name, the positive class first then the others in ``data.classes`` order;
    ``head`` is ``data.head_classes`` (label i is ``head[i]``, the positive class last)."""
    values = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else labels
    found = np.bincount(np.asarray(values, dtype=np.int64), minlength=len(head))
    order = [len(head) - 1, *range(len(head) - 1)]
    return {head[i]: int(found[i]) for i in order}


@dataclass
class LoadResult:
    images: ImageSet
    skipped: list[dict]
    # key -> fingerprint.pixel_digest of the decoded, resized pixels, for every kept image
    fingerprints: dict[str, str] = field(default_factory=dict)
    lineage: Lineage | None = None  # what was read: (size, sha256) per kept key, and the skipped keys


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


NOT_AN_IMAGE = "not a recognised image (PNG, JPEG, BMP, TIFF or DICOM)"


class NotAnImage(ValueError):
    """Neither Pillow nor pydicom reads the object: skipped and listed."""


@dataclass
class Decoded:
    pixels: np.ndarray  # uint8 size x size (gray) or size x size x 3
    patient_id: str = ""  # a DICOM's raw PatientID: pseudonymize before it goes anywhere
    first_of_frames: bool = False  # a multi-frame DICOM read at its first frame, no frame asked for
    several_regions: bool = False  # a DICOM with several 2D tissue regions, cut to the largest
    mask_known: bool = False  # region.Selection.known: figures may show these pixels
    mask_reason: str = ""


def decode_item(data: bytes, size: int, max_pixels: int, roi_mode: str = "none", frame: int | None = None,
                roi: tuple[int, int, int, int] | None = None, where: str = "image") -> Decoded:
    """Bytes -> the region of interest (``region.select``) resized and centre-cropped to
    size x size: HxW when the image is grayscale (a single-channel mode, or RGB with three equal
    channels), else HxWx3. ValueError: skip the object; DataError (naming ``where``): the
    manifest or the region asks for what the object does not have."""
    if not data:
        raise ValueError("empty object (0 bytes)")
    patient_id, dicom_roi, first_of_frames, several, image, lossy = "", None, False, False, None, True
    if dicom.is_dicom(data):
        image = _read_dicom(data, max_pixels, frame, where)
    else:
        try:
            opened = _open_8bit(data, max_pixels)
            source, lossy = np.asarray(opened), opened.info.get("lossy", True)
        except NotAnImage:  # a DICOM data set without preamble and file meta, or nothing gistnet reads
            try:
                image = _read_dicom(data, max_pixels, frame, where, headerless=True)
            except dicom.NotDicom:
                raise NotAnImage(NOT_AN_IMAGE) from None
        else:
            if frame:
                raise DataError(f"{where}: frame {frame} is out of range: not a multi-frame DICOM (only frame 0)")
    if image is not None:
        if image.no_tissue and roi is None and roi_mode != "none":  # the region would come from the DICOM
            raise ValueError(image.no_tissue)
        source, dicom_roi, patient_id = image.pixels, image.region, image.patient_id
        first_of_frames = frame is None and image.frames > 1
        several = roi is None and roi_mode != "none" and image.tissue_regions > 1
    height, width = source.shape[:2]
    if region.too_small(width, height, size):  # one rule for every image, whatever its format or region
        least = next(n for n in range(1, size + 3) if not region.too_small(n, n, size))  # region's rule, not a copy
        raise ValueError(f"image of {width}x{height} pixels is too small for data.image_size={size} (each side at "
                         f"least {least})")
    selection = region.select(source, roi_mode, roi, dicom_roi, size, where, lossy)
    img = Image.fromarray(np.ascontiguousarray(selection.pixels))
    # PIL resizes each 8-bit channel alike, so a gray image resized as L equals it resized as RGB.
    array = np.array(ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC), dtype=np.uint8)  # writable
    if array.ndim == 3 and (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all():
        array = array[..., 0]
    return Decoded(array, patient_id, first_of_frames, several, selection.known, selection.reason)


def _read_dicom(data: bytes, max_pixels: int, frame: int | None, where: str, headerless: bool = False):
    try:
        return dicom.read(data, max_pixels, frame, where, headerless)
    except IndexError as exc:
        raise DataError(f"{where}: {exc}") from None


def decode_pixels(data: bytes, size: int, max_pixels: int, roi_mode: str = "auto") -> np.ndarray:
    """``decode_item``'s pixels (no manifest frame or roi); ``roi_mode`` defaults to data.roi's default."""
    return decode_item(data, size, max_pixels, roi_mode).pixels


def _open_8bit(data: bytes, max_pixels: int) -> Image.Image:
    """A PNG, JPEG, BMP or TIFF as an ``L`` or ``RGB`` PIL image; ValueError when it is none."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
                if img.width * img.height > max_pixels:
                    raise ValueError(f"image of {img.width}x{img.height} pixels exceeds data.max_image_pixels={max_pixels}")
                img.load()
                lossy = img.format == "JPEG"
                img = _to_8bit(img)
                img.info["lossy"] = lossy  # region.select: a lossless image needs no margin for JPEG ringing
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ValueError(f"decompression bomb guard: {exc}") from None
        except Image.UnidentifiedImageError:
            raise NotAnImage(NOT_AN_IMAGE) from None
        except OSError as exc:
            raise ValueError(f"corrupt or truncated image ({exc})") from None
    return img


def decode_image(data: bytes, size: int, max_pixels: int, roi_mode: str = "auto") -> np.ndarray:
    """Bytes -> uint8 HxWx3 array, resized and centre-cropped to size x size."""
    array = decode_pixels(data, size, max_pixels, roi_mode)
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
                     on_done=None, roi_mode: str = "none", lineage: Lineage | None = None,
                     pseudo: Pseudonymizer | None = None, where=None,
                     masks: list | None = None) -> tuple[list[Labeled], torch.Tensor, list[dict], list[str]]:
    """Read each object on ``threads`` threads and decode it on ``reading.decode_threads(threads)``
    (``reading.read_then_decode``) straight into its row of one preallocated tensor; its bytes are
    dropped as soon as it is decoded, so at most 2 x ``threads`` + the decoding threads objects are held at once.
    Drops undecodable objects and same-class
    duplicates (the first in listing order is kept), fails on cross-class ones. A DICOM's
    PatientID fills ``patient_id`` of an item the manifest gave none (raw: pseudonymize it).
    ``lineage``, when given, receives the size, sha256 and use (``lineage.use_of``) of each kept object and
    the keys skipped.
    ``where(key)`` names an object in errors (default its URI; ``privacy.namer``), ``pseudo`` scrubs
    keys from skip reasons (data.pseudonymize_keys).
    ``masks``, when given, receives (known, reason) of each kept item's region mask.
    Returns the kept items, their pixels, the skipped objects and the kept items' pixel digests."""
    where = where or store.uri_of
    canvas = Canvas(len(labeled), size)
    pixel_digests: list[str | None] = [None] * len(labeled)
    dicom_ids, first_frames, several = [""] * len(labeled), [False] * len(labeled), [False] * len(labeled)
    known: list[tuple[bool, str]] = [(False, "")] * len(labeled)
    outcomes: list[tuple[str | None, str | None, int]] = [(None, None, 0)] * len(labeled)
    progress, count_lock = [0], threading.Lock()

    def decode(row: int, data: bytes | Exception) -> None:
        item = labeled[row]
        if isinstance(data, StorageError):
            raise data
        if isinstance(data, Exception):
            outcomes[row] = _unreadable(data, item.key, pseudo), None, 0
        else:
            try:
                decoded = decode_item(data, size, max_pixels, roi_mode, item.frame, item.roi, where(item.key))
                canvas.put(row, decoded.pixels)
                pixel_digests[row] = pixel_digest(decoded.pixels)
                dicom_ids[row], first_frames[row] = decoded.patient_id, decoded.first_of_frames
                several[row] = decoded.several_regions
                known[row] = (decoded.mask_known, decoded.mask_reason)
                outcomes[row] = None, hashlib.sha256(data).hexdigest(), len(data)
            except ValueError as exc:
                outcomes[row] = str(exc), None, len(data)
        if on_done:
            with count_lock:
                progress[0] += 1
                on_done(progress[0])

    read_then_decode(len(labeled), lambda row: store.read(labeled[row].key), decode, threads, decode_threads(threads))
    if any(first_frames):  # counted, not named: object keys may be patient data (data.pseudonymize_keys)
        log.info("%d multi-frame DICOM objects read at their first frame (a manifest 'frame' column chooses "
                 "another)", sum(first_frames))
    _state_regions(sum(several))
    kept_rows, skipped, seen = [], [], {}
    for row, (reason, digest, nbytes) in enumerate(outcomes):
        if _keep(labeled[row], reason, digest, seen, skipped, where=where):
            kept_rows.append(row)
            if dicom_ids[row] and not labeled[row].patient_id:
                labeled[row].patient_id = dicom_ids[row]
            if lineage is not None:
                lineage.add(labeled[row], nbytes, digest)  # its bytes, label, patient, site, region
    if lineage is not None:
        lineage.skipped += [s["key"] for s in skipped]
    if masks is not None:
        masks += [known[r] for r in kept_rows]
    return ([labeled[r] for r in kept_rows], canvas.compact(kept_rows), skipped,
            [pixel_digests[r] for r in kept_rows])


def _state_regions(count: int) -> None:
    """Say how many DICOM objects had several 2D tissue regions (counted, not named: keys may be patient data)."""
    if count:
        log.info("%d DICOM objects have several 2D tissue ultrasound regions: each is cut to its largest (a "
                 "manifest 'roi' column chooses another)", count)


def _unreadable(exc: Exception, key: str, pseudo: Pseudonymizer | None) -> str:
    """A read failure's skip reason; an exception's text may quote the key (a local path)."""
    reason = f"could not be read: {type(exc).__name__}: {exc}"
    return pseudo.scrub(reason, key) if pseudo is not None else reason


def _keep(item: Labeled, reason: str | None, digest: str | None, seen: dict, skipped: list,
          dedupe: bool = True, where=lambda key: key) -> bool:
    """Whether a decoded object joins the set: not when it failed (listed with ``reason``) or,
    with ``dedupe``, when it repeats an earlier object's bytes (listed as a duplicate; an error
    when the two are labeled differently)."""
    if reason:
        skipped.append({"key": item.key, "reason": reason})
        return False
    if dedupe and digest in seen:
        first = seen[digest]
        if first.label != item.label:
            raise DataError(f"the same image is labeled both classes: {where(first.key)} and {where(item.key)}")
        skipped.append({"key": item.key, "reason": f"duplicate of {first.key} (same bytes)"})
        return False
    seen[digest] = item
    return True


def decode_all(raw: dict[str, bytes | Exception], labeled: list[Labeled], size: int, max_pixels: int,
               threads: int, on_done=None, dedupe: bool = True, roi_mode: str = "none",
               where=lambda key: key, pseudo: Pseudonymizer | None = None
               ) -> tuple[list[Labeled], list[np.ndarray], list[dict]]:
    """Decode in parallel; drop undecodable objects and same-class duplicates, fail on cross-class
    ones. ``dedupe=False`` (scoring) keeps duplicates: every object gets its own prediction.
    A DICOM's PatientID fills ``patient_id`` where the manifest gave none (raw: pseudonymize it)."""

    def work(item: Labeled):
        value = raw[item.key]
        if isinstance(value, Exception):
            return item, None, _unreadable(value, item.key, pseudo), None
        try:
            decoded = decode_item(value, size, max_pixels, roi_mode, item.frame, item.roi, where(item.key))
        except ValueError as exc:
            return item, None, str(exc), None
        if decoded.patient_id and not item.patient_id:
            item.patient_id = decoded.patient_id
        several[item.key] = decoded.several_regions
        pixels = decoded.pixels
        return item, (np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels), None, \
            hashlib.sha256(value).hexdigest()

    kept, arrays, skipped, seen, several = [], [], [], {}, {}
    with ThreadPoolExecutor(max_workers=decode_threads(threads)) as pool:  # bytes already read: CPU work only
        for n, (item, array, reason, digest) in enumerate(pool.map(work, labeled), 1):
            if on_done:
                on_done(n)
            if _keep(item, reason, digest, seen, skipped, dedupe, where):
                kept.append(item)
                arrays.append(array)
    _state_regions(sum(several.values()))
    return kept, arrays, skipped


def _progress(verb: str, total: int):
    """A callback logging every 10% of a long transfer."""
    step = max(1, total // 10)

    def on_done(n: int) -> None:
        if total >= 100 and (n % step == 0 or n == total):
            log.info("%s %d/%d images", verb, n, total)

    return on_done


def load_images(store: Store, cfg: DataConfig, device: torch.device, on_stage=None,
                pseudo: Pseudonymizer | None = None, mapping: Store | None = None) -> LoadResult:
    """Download and decode the whole data set into one uint8 tensor on ``device``
    (N x 1 x S x S when every image is grayscale, else N x 3 x S x S). Keys and patient ids
    come out as ``pseudo`` shows them (a throw-away random key when None); errors name a key by
    its pseudonym and ``mapping`` (the run's store) as where the mapping is kept.

    ``on_stage(name, seconds, count)`` is called after the load (download and decode overlap).
    """
    import secrets
    import time

    pseudo = pseudo or Pseudonymizer(secrets.token_bytes(32), False, cfg.pseudonymize_keys)
    labeled, unsafe = list_labeled(store, cfg, pseudo)
    log.info("loading %d images from %s (%d threads reading, %d decoding)", len(labeled), store.uri,
             cfg.download_threads, decode_threads(cfg.download_threads))
    start = time.perf_counter()
    lineage = Lineage(skipped=[relative_key(store, s["uri"]) for s in unsafe])
    masks: list[tuple[bool, str]] = []
    kept, images, skipped, digests = load_into_tensor(store, labeled, cfg.image_size, cfg.max_image_pixels,
                                                      cfg.download_threads, _progress("loaded", len(labeled)), cfg.roi,
                                                      lineage, pseudo, privacy.namer(store, pseudo, mapping), masks)
    if on_stage:
        on_stage("load", time.perf_counter() - start, len(kept))
    skipped = unsafe + [{"uri": store.uri_of(s["key"]), "reason": s["reason"]} for s in skipped]
    keys, patient_ids = privacy.outputs([k.key for k in kept], [k.patient_id for k in kept], skipped, store, pseudo)
    for s in skipped:
        log.warning("skipped %s: %s", s["uri"], s["reason"])
    head = cfg.head_classes
    for label, name in sorted(enumerate(head), key=lambda pair: cfg.classes.index(pair[1])):
        n = sum(1 for k in kept if k.label == label)
        if n < cfg.min_images_per_class:
            raise DataError(f"class {name!r} has {n} usable images in {store.uri}; "
                            f"at least data.min_images_per_class={cfg.min_images_per_class} are needed")
    labels = torch.tensor([k.label for k in kept], dtype=torch.long)
    return LoadResult(ImageSet(keys, images.to(device), labels.to(device), patient_ids,
                               [k.site or "" for k in kept], [k.covariates for k in kept],
                               region.withheld([k for k, _ in masks], [r for _, r in masks]),
                               [pseudo.lesion(k.lesion_id) for k in kept]), skipped,
                      {k: d for k, d in zip(keys, digests)}, lineage)
