"""The lesion as the unit: one call per lesion from all of its images.

An endoscopist records several images of a lesion and makes one call; multi-centre studies
report every metric by image and by lesion. A lesion's score is the mean of its images'
logits per class (then the softmax), the same rule as a fold ensemble's mean of logits.
Lesion ids come from the manifest's ``lesion_id``; without one, every image of a patient is
one lesion (``patient_id``), and without a patient id every image is its own lesion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULE = "mean of the lesion's images' logits per class, then the softmax"


class LesionError(ValueError):
    """A lesion whose images disagree (two labels, two patients): the message names it."""


@dataclass(frozen=True)
class Lesions:
    ids: list[str]  # one per lesion, sorted
    logits: np.ndarray  # (lesions, K)
    labels: np.ndarray  # (lesions,) class index
    patients: list[str]  # the lesion's patient id ("" without one)
    images: np.ndarray  # (lesions,) images per lesion
    source: str  # how the ids were made: lesion_id, patient_id or image


def lesion_ids(keys, patient_ids=None, lesion_ids_=None) -> tuple[list[str], str]:
    """The lesion of each image and where the ids came from."""
    keys = list(keys)
    if lesion_ids_ is not None and any(lesion_ids_):
        return [str(lid) if lid else f"image:{k}" for k, lid in zip(keys, lesion_ids_)], "lesion_id"
    if patient_ids is not None and any(patient_ids):
        return [f"patient:{p}" if p else f"image:{k}" for k, p in zip(keys, patient_ids)], "patient_id"
    return [f"image:{k}" for k in keys], "image"


def aggregate(logits, labels, lesions: list[str], patients=None, source: str = "lesion_id") -> Lesions:
    """Per-lesion mean logits and labels; LesionError for a lesion with two labels or two patients."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, int)
    pats = [str(p or "") for p in (patients if patients is not None else [""] * len(y))]
    order = sorted(set(lesions))
    index = {lid: i for i, lid in enumerate(order)}
    members: list[list[int]] = [[] for _ in order]
    for n, lid in enumerate(lesions):
        members[index[lid]].append(n)
    out_logits, out_labels, out_patients = [], [], []
    for lid, rows in zip(order, members):
        found = sorted(set(y[rows].tolist()))
        if len(found) > 1:
            raise LesionError(f"lesion {lid!r} has images labelled with {len(found)} classes (one lesion, one "
                              "diagnosis: check the manifest's label and lesion_id columns)")
        owners = sorted({pats[r] for r in rows} - {""})
        if len(owners) > 1:
            raise LesionError(f"lesion {lid!r} has images of {len(owners)} patients ({', '.join(owners)}): "
                              "a lesion belongs to one patient")
        out_logits.append(z[rows].mean(axis=0))
        out_labels.append(found[0])
        out_patients.append(owners[0] if owners else "")
    return Lesions(order, np.asarray(out_logits), np.asarray(out_labels, int), out_patients,
                   np.asarray([len(r) for r in members]), source)
