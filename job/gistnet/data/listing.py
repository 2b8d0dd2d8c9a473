"""Listing a data set: which objects are images of which class, from class folders or a
``manifest.csv`` (``manifest.read_manifest``) at the data root; unsafe keys are listed, never
used. With ``data.pseudonymize_keys`` logs and errors name keys by their pseudonyms (``privacy``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from gistnet.config import DataConfig
from gistnet.data import privacy
from gistnet.data.manifest import read_manifest
from gistnet.data.privacy import Pseudonymizer
from gistnet.data.storage import LocalStore, Store, is_safe_key
from gistnet.errors import DataError

log = logging.getLogger(__name__)

# Names that look like images: such an object at the data root (outside any class folder) is
# listed in dataset.skipped; other root files (a README, synth.json) are only logged.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")


@dataclass
class Labeled:
    key: str
    label: int  # index into data.head_classes (config.head_order): two classes, 1 positive (GIST), 0 negative (LM)
    patient_id: str = ""
    site: str | None = None
    covariates: dict[str, str] = field(default_factory=dict)
    frame: int | None = None  # of a multi-frame DICOM; None: the first
    roi: tuple[int, int, int, int] | None = None  # x0 y0 x1 y1 in source pixels (manifest)
    lesion_id: str = ""  # the manifest's lesion_id ("" without one)


def label_indices(cfg: DataConfig) -> dict[str, int]:
    """Class name -> label index: the network's output order (``config.head_order``), the one rule."""
    return {name: i for i, name in enumerate(cfg.head_classes)}


def check_lesions(labeled: list[Labeled], where: str) -> None:
    """DataError naming the first lesion whose images carry two labels or two patients."""
    seen: dict[str, tuple[int, str]] = {}
    for item in labeled:
        if not item.lesion_id:
            continue
        label, patient = seen.setdefault(item.lesion_id, (item.label, item.patient_id or ""))
        if label != item.label:
            raise DataError(f"{where}: lesion {item.lesion_id!r} has images of two classes (one lesion, one "
                            "diagnosis: check the label and lesion_id columns)")
        if patient and item.patient_id and patient != item.patient_id:
            raise DataError(f"{where}: lesion {item.lesion_id!r} has images of two patients (a lesion belongs "
                            "to one patient: check the patient_id and lesion_id columns)")
        if not patient and item.patient_id:
            seen[item.lesion_id] = (label, item.patient_id)


def _read_manifest(store: Store, cfg: DataConfig) -> list[Labeled]:
    where = store.uri_of(cfg.manifest)
    names = label_indices(cfg)
    rows = read_manifest(store.read(cfg.manifest).decode("utf-8-sig"), where)
    unknown = sorted({r.label for r in rows} - set(names))
    if unknown:
        raise DataError(f"{where}: unknown label(s) {', '.join(repr(u) for u in unknown)} "
                        f"(configured: {', '.join(cfg.classes)})")
    labeled = [Labeled(r.path, names[r.label], r.patient_id or "", r.site, dict(r.covariates), r.frame, r.roi,
                       r.lesion_id or "") for r in rows]
    check_lesions(labeled, where)
    return labeled


def _listed(store: Store) -> tuple[list[str], list[dict]]:
    """Every object key, and the keys skipped as unsafe (absolute or with '..': never trusted as paths)."""
    keys = store.list()
    if not keys:
        if isinstance(store, LocalStore) and store.root.is_file():
            raise DataError(f"{store.uri} is a file: the data is a folder (or S3 prefix) of class folders "
                            "or with a manifest.csv")
        raise DataError(f"no objects found under {store.uri} (empty or wrong prefix)")
    unsafe = [{"uri": f"{store.uri}/{k}", "reason": "unsafe object key (absolute or contains '..')"}
              for k in keys if not is_safe_key(k)]
    return [k for k in keys if is_safe_key(k)], unsafe


def list_labeled(store: Store, cfg: DataConfig, pseudo: Pseudonymizer | None = None) -> tuple[list[Labeled], list[dict]]:
    """Labeled object keys, from the manifest if there is one, else from class folders;
    and the keys skipped as unsafe (absolute or with '..': never trusted as paths). With
    ``pseudo`` (data.pseudonymize_keys) logs and errors name keys by their pseudonyms."""
    keys, unsafe = _listed(store)
    labeled, unsafe = _labeled(store, keys, unsafe, cfg, require_both_classes=True, pseudo=pseudo)
    counts = {name: sum(1 for x in labeled if x.label == i) for i, name in enumerate(cfg.head_classes)}
    log.debug("listing %s: %d objects, %d labeled images (%s), %d unsafe keys skipped", store.uri,
              len(keys), len(labeled), ", ".join(f"{counts[name]} {name}" for name in cfg.classes), len(unsafe))
    return labeled, unsafe


def list_for_scoring(store: Store, cfg: DataConfig, pseudo: Pseudonymizer | None = None
                     ) -> tuple[list[Labeled], list[dict], bool]:
    """Objects to score, the unsafe keys, and whether they are labeled. Labeled when there is a
    manifest or class folders (one class is enough); otherwise every object is scored, with
    ``label`` -1."""
    keys, unsafe = _listed(store)
    names = cfg.classes
    if cfg.manifest in keys or any(k.partition("/")[0] in names and "/" in k for k in keys):
        labeled, unsafe = _labeled(store, keys, unsafe, cfg, require_both_classes=False, pseudo=pseudo)
        return labeled, unsafe, True
    if pseudo is not None:
        pseudo.watch(keys)
    return [Labeled(k, -1) for k in keys], unsafe, False


def _labeled(store: Store, keys: list[str], unsafe: list[dict], cfg: DataConfig,
             require_both_classes: bool, pseudo: Pseudonymizer | None = None) -> tuple[list[Labeled], list[dict]]:
    name = privacy.namer(store, pseudo)
    if pseudo is not None:  # image keys only: the manifest's name is configuration, not patient data
        pseudo.watch([k for k in keys if k != cfg.manifest])
    if cfg.manifest in keys:
        labeled = _read_manifest(store, cfg)
        unsafe += [{"uri": f"{store.uri}/{lab.key}", "reason": "unsafe path in manifest (absolute or contains '..')"}
                   for lab in labeled if not is_safe_key(lab.key)]
        if pseudo is not None:
            pseudo.watch(lab.key for lab in labeled)
        return [lab for lab in labeled if is_safe_key(lab.key)], unsafe
    names = label_indices(cfg)
    labeled = []
    for key in keys:
        folder, sep, rest = key.partition("/")
        if not sep:
            log.info("ignoring %s at the data root (not in a class folder)", name(key))
            if key.lower().endswith(IMAGE_SUFFIXES):
                unsafe.append({"uri": store.uri_of(key), "reason": "image at the data root, not in a class folder"})
            continue
        if folder not in names:
            # the folder may be an MRN: with data.pseudonymize_keys named through an object under it
            shown = repr(folder) if name == store.uri_of else f"of {name(key)}"
            raise DataError(f"unknown class folder {shown} in {store.uri} "
                            f"(configured classes: {', '.join(cfg.classes)})")
        labeled.append(Labeled(key, names[folder]))
    present = [name for name in cfg.classes if any(lab.key.startswith(f"{name}/") for lab in labeled)]
    for name in cfg.classes:
        if name not in present and (require_both_classes or not present):
            raise DataError(f"class folder {name!r} is missing or empty in {store.uri}")
    return labeled, unsafe
