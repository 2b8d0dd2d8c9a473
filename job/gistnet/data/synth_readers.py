"""Simulated readers for a synthetic reader study (``gistnet synth --readers N``, ``gistnet demo --readers``).

Each reader sees a case's latent evidence through a binormal model: a positive case's mean is
the reader's skill d (a negative's 0), every reader shares the case's difficulty (so readers
are correlated through the cases, as in a real study) and adds noise of their own. A reader
rates on a 1-5 scale around a threshold of their own and calls the positive class at or
above it. Aided, the same reader's skill rises by ``aid_gain`` and half their noise is
replaced by fresh noise: readers improve by different amounts, and the two modalities stay
correlated. Deterministic for the seed.
"""

from __future__ import annotations

import csv
import io

import numpy as np

MODALITIES = ("unaided", "aided")
CASE_WEIGHT = 0.6  # share of the latent noise that every reader sees alike (case difficulty)


def simulate(cases: list[str], truth: list[str], positive: str, n_readers: int, seed: int,
             patients: list[str | None] | None = None, aid_gain: float = 0.5) -> str:
    """A readers CSV (case, reader, modality, rating, call, truth[, patient_id]) for ``cases``."""
    if n_readers < 1:
        raise ValueError("at least one reader")
    rng = np.random.default_rng([seed, 31337])
    is_pos = np.array([t == positive for t in truth], float)
    difficulty = rng.normal(size=len(cases))
    negative = next((t for t in truth if t != positive), "negative")
    rows = []
    for j in range(n_readers):
        skill = rng.uniform(0.9, 1.7)
        gain = aid_gain * rng.uniform(0.5, 1.5)
        threshold = skill / 2 + rng.normal(0, 0.25)
        own = rng.normal(size=len(cases))
        for modality in MODALITIES:
            d = skill + (gain if modality == "aided" else 0.0)
            noise = own if modality == "unaided" else (own + rng.normal(size=len(cases))) / np.sqrt(2)
            latent = is_pos * d + CASE_WEIGHT * difficulty + np.sqrt(1 - CASE_WEIGHT**2) * noise
            cuts = threshold + np.array([-1.2, -0.4, 0.0, 0.6])  # ratings 4 and 5: at or above the threshold
            ratings = 1 + (latent[:, None] >= cuts[None, :]).sum(axis=1)
            for k, case in enumerate(cases):
                call = positive if latent[k] >= threshold else negative
                rows.append([case, f"reader-{j + 1}", modality, int(ratings[k]),
                             call, truth[k], (patients[k] or "") if patients else None])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["case", "reader", "modality", "rating", "call", "truth"] + (["patient_id"] if patients else [])
    writer.writerow(header)
    for row in rows:
        writer.writerow(row if patients else row[:-1])
    return buffer.getvalue()
