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
