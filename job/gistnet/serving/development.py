"""Which scored images are a run's own development images, recognised by pixel content.

A run's development images are its training and validation images: training fitted the
weights, validation chose the epoch and the best model. Scoring them again measures how well
the model remembers them, not how it does on new patients, so ``predict`` leaves them out of
its metrics (``--include-development`` reports them apart, marked as not an evaluation).
They are matched by ``fingerprint.pixel_digest`` against the run's ``fingerprints.json``, so a
renamed or losslessly re-encoded copy (PNG re-saved, BMP, TIFF) is still recognised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gistnet.data import fingerprint
from gistnet.data.storage import Store
from gistnet.errors import DataError

log = logging.getLogger(__name__)

NOT_AN_EVALUATION = ("NOT AN EVALUATION: these images are the run's own training and validation images; "
                     "their metrics show how the model fits the data it was developed on, not how it does on new images")


@dataclass(frozen=True)
class Overlap:
    """Per scored image, the run's key of the development image it equals (None: unseen)."""

    checked: bool  # False: the run has no fingerprints.json, nothing could be matched
    matches: list[str | None]
    reference: str  # where the run's fingerprints are

    @property
    def count(self) -> int:
        return sum(m is not None for m in self.matches)

    def unseen(self) -> list[int]:
        return [i for i, m in enumerate(self.matches) if m is None]

    def development(self) -> list[int]:
        return [i for i, m in enumerate(self.matches) if m is not None]


def find(run: Store, digests: list[str]) -> Overlap:
    """Match ``digests`` (``fingerprint.pixel_digest`` of each scored image) against the run's record."""
    where = run.uri_of(fingerprint.FILENAME)
    try:
        known = fingerprint.read_fingerprints(run)
    except FileNotFoundError:
        log.warning("run %s has no %s (trained before gistnet recorded its development images): images it was "
                    "trained or validated on cannot be recognised, and metrics may include them", run.uri,
                    fingerprint.FILENAME)
        return Overlap(False, [None] * len(digests), where)
    return Overlap(True, [known.get(d) for d in digests], where)


def section(overlap: Overlap, labeled: bool) -> dict:
    """``predictions.json``'s ``development_data``: what was checked and how many were found."""
    if not overlap.checked:
        note = (f"not checked: the run has no {fingerprint.FILENAME}; images it was trained or validated on cannot "
                "be recognised" + (", and the metrics may include them" if labeled else ""))
    elif labeled:
        note = (f"{overlap.count} of {len(overlap.matches)} scored images are the run's development images "
                "(training and validation), matched by pixel content: excluded from the metrics")
    else:
        note = (f"{overlap.count} of {len(overlap.matches)} scored images are the run's development images "
                "(training and validation), matched by pixel content")
    return {"checked": overlap.checked, "method": fingerprint.METHOD, "reference": overlap.reference,
            "images": overlap.count if overlap.checked else None,
            "excluded_from_evaluation": overlap.count if labeled and overlap.checked else 0, "note": note}


def evaluation_note(overlap: Overlap) -> str:
    """What ``predictions.json``'s ``evaluation`` covers (labelled data), or why it is n/a."""
    unseen, excluded = len(overlap.unseen()), overlap.count
    if not unseen:
        return (f"n/a: all {excluded} labelled images are the run's development images (training and validation); "
                "scoring a model on the images it was developed on is not an evaluation "
                "(--include-development reports them apart, marked as such)")
    checked = "" if overlap.checked else f" (development images not checked: the run has no {fingerprint.FILENAME})"
    return (f"over the {unseen} labelled images not in the run's development data; {excluded} excluded as the run's "
            f"training or validation images{checked}")


DEVELOPMENT_IMAGE = "development image (same decoded pixels)"
DEVELOPMENT_PATIENT = "development patient (same pseudonymised patient id)"
IN_DEVELOPMENT = (DEVELOPMENT_IMAGE, DEVELOPMENT_PATIENT)


def exclusions(keys: list[str], digests: list[str], patients: list[str], labels, dev_digests, dev_patients
               ) -> list[str]:
    """Per external image, why it is left out of the metrics ("" when evaluated), first reason wins:

    - a development image: its ``digest`` is in ``dev_digests`` (the run's ``fingerprints.json``);
    - a development patient: its pseudonymised ``patient`` id (same key as the run's) is in
      ``dev_patients``, even when the pixels differ (a new image of a patient the model was developed on);
    - a repeat within the set: the same pixels as an image with a smaller key, which alone is evaluated
      (``repeat of <key>``); a copy under a new patient id would otherwise count as independent evidence.

    ``patients`` holds "" for an image without a patient id of its own (never matched). Two images
    with the same pixels and different ``labels`` are a DataError naming both.
    """
    dev_digests, dev_patients = set(dev_digests), set(dev_patients)
    reasons = [""] * len(keys)
    first: dict[str, int] = {}
    for i in sorted(range(len(keys)), key=lambda j: keys[j]):
        if digests[i] in dev_digests:
            reasons[i] = DEVELOPMENT_IMAGE
        elif patients[i] and patients[i] in dev_patients:
            reasons[i] = DEVELOPMENT_PATIENT
        elif digests[i] in first:
            j = first[digests[i]]
            if labels[j] != labels[i]:
                raise DataError(f"the same image is labeled both classes: {keys[j]} and {keys[i]}")
            reasons[i] = f"repeat of {keys[j]}"
        else:
            first[digests[i]] = i
    return reasons
