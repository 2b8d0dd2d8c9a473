"""Data lineage: one digest of the data set as a run used it.

The digest is sha256 over the sorted ``(key, size, sha256 of the object's bytes)`` of every
image kept, then the sorted keys of the objects skipped, then the digest of how each kept image
was used (``uses_digest``): its label, the images it shares a patient with, its site, its
region (DICOM frame, manifest roi) and the manifest's other columns (covariates, lesion ids).
A patient is named by the first key (in sorted order) of its images, never by its id, so the
digest does not depend on the ids' spelling or pseudonyms, only on which images belong
together. Keys are relative to the data root, so the same objects give the same digest on a
local folder and in a bucket, in any listing or manifest row order; changing one image's bytes,
one label, a patient's images or a region changes it. The per-object entries (not the uses: they
hold patient ids) are stored with the run (``lineage.json``, with ``uses_digest``) so that a
resumed run can tell which objects changed content under the same key, and refuse.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from gistnet.data.storage import Store
from gistnet.errors import DataError

FILENAME = "lineage.json"
METHOD = ("sha256 over sorted (key, size, sha256 of bytes) of the images kept, the sorted skipped keys, and the "
          "digest of each kept image's use (label, patient group, site, frame, roi, manifest covariates)")


def use_of(item) -> tuple:
    """How a listed image (``listing.Labeled``) is used: label, patient id, site, frame, roi, covariates."""
    return (int(item.label), item.patient_id or "", item.site or "", item.frame,
            list(item.roi) if item.roi is not None else None, dict(sorted((item.covariates or {}).items())))


@dataclass
class Lineage:
    objects: dict[str, tuple[int, str]] = field(default_factory=dict)  # key -> (size in bytes, sha256 hex)
    skipped: list[str] = field(default_factory=list)  # keys relative to the data root
    uses: dict[str, tuple] = field(default_factory=dict)  # key -> use_of(item); in memory only (patient ids)
    saved_uses_digest: str | None = None  # a saved lineage's (lineage.json keeps no uses)

    def add(self, item, size: int, sha256: str) -> None:
        """A kept image: its bytes and how it is used."""
        self.objects[item.key] = (size, sha256)
        self.uses[item.key] = use_of(item)

    def uses_digest(self) -> str:
        if not self.uses and self.saved_uses_digest:
            return self.saved_uses_digest
        first_key: dict[str, str] = {}  # patient id -> the first key of its images: ids never enter the digest
        for key in sorted(self.uses):
            patient = self.uses[key][1]
            if patient:
                first_key.setdefault(patient, key)
        h = hashlib.sha256()
        for key in sorted(self.uses):
            label, patient, site, frame, roi, covariates = self.uses[key]
            h.update((json.dumps([key, label, first_key.get(patient, ""), site, frame, roi, covariates],
                                 sort_keys=True) + "\n").encode())
        return "sha256:" + h.hexdigest()

    def digest(self) -> str:
        h = hashlib.sha256()
        for key in sorted(self.objects):
            size, sha = self.objects[key]
            h.update(f"{key}\t{size}\t{sha}\n".encode())
        h.update(b"skipped\n")
        for key in sorted(self.skipped):
            h.update(f"{key}\n".encode())
        h.update(f"uses\t{self.uses_digest()}\n".encode())
        return "sha256:" + h.hexdigest()

    def summary(self, name: str, source: str) -> dict:
        """What dataset.json, report.json, the model card and MLflow carry."""
        return {"name": name, "digest": self.digest(), "source": source, "method": METHOD,
                "images": len(self.objects), "skipped": len(self.skipped)}

    def to_dict(self) -> dict:
        return {"method": METHOD, "digest": self.digest(), "uses_digest": self.uses_digest(),
                "objects": {k: {"size": s, "sha256": h} for k, (s, h) in sorted(self.objects.items())},
                "skipped": sorted(self.skipped)}

    @classmethod
    def from_dict(cls, d: dict) -> "Lineage":
        return cls({k: (int(v["size"]), v["sha256"]) for k, v in d["objects"].items()}, list(d["skipped"]),
                   saved_uses_digest=d.get("uses_digest"))


def name_of(uri: str) -> str:
    """A data set's name: the last path component of its URI (the bucket for a bucket root)."""
    return uri.rstrip("/").rpartition("/")[2] or uri


def relative_key(store: Store, uri_or_key: str) -> str:
    """A skipped entry's key relative to the data root (entries may name a full URI)."""
    root = store.uri.rstrip("/") + "/"
    return uri_or_key[len(root):] if uri_or_key.startswith(root) else uri_or_key


def changed_objects(saved: Lineage, current: Lineage) -> list[str]:
    """Keys present in both whose content (size or sha256) differs."""
    return sorted(k for k, v in saved.objects.items() if k in current.objects and current.objects[k] != v)


def settle(out: Store, current: Lineage, fresh: bool) -> Lineage:
    """The lineage this run records. A new (or ``fresh``) run records ``current``; a resumed run
    keeps the one it started with, and is refused when an object it used changed content."""
    if not fresh:
        try:
            saved = Lineage.from_dict(json.loads(out.read(FILENAME)))
        except FileNotFoundError:
            saved = None
        if saved is not None:
            changed = changed_objects(saved, current)
            if changed:
                raise DataError(
                    f"{len(changed)} object{'s' if len(changed) != 1 else ''} of the data changed content since run "
                    f"{out.uri} started (first: {changed[0]}; recorded in {out.uri_of(FILENAME)}); "
                    "start a new run id, or --force to start it over")
            return saved
    out.write_bytes(FILENAME, json.dumps(current.to_dict(), indent=1).encode())
    return current
