"""``predictions.csv``: one row per validation image and model, the raw material of every
number in the report (and of a reviewer's own re-analysis).

Columns: ``key`` (object key under the data URI), ``patient_id`` (empty without a
manifest), ``label`` (the true class name), ``fold`` (0..K-1 in a k-fold run; empty in a
hold-out run, whose validation set is not a fold), ``model``, ``probability`` (P(positive
class)) and ``score`` (the logit difference positive - negative: the same ranking as the
probability, without its saturation at 0 and 1, so ROC and DeLong use it).

Rows are sorted by model, fold and key, so the same predictions give the same bytes.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from gistnet.data.storage import Store

FILENAME = "predictions.csv"
COLUMNS = ("key", "patient_id", "label", "fold", "model", "probability", "score")
# log(p / (1 - p)) of a float32 probability cannot exceed about +-17; clip to keep it finite.
_PROBABILITY_EPS = 1e-12


@dataclass(frozen=True)
class Prediction:
    key: str
    patient_id: str
    label: str
    fold: int | None
    model: str
    probability: float
    score: float


def scores_from_probabilities(probabilities) -> np.ndarray:
    """log(p / (1 - p)), in float64, from P(positive) clipped to [1e-12, 1 - 1e-12].

    For a two-class softmax this recovers logit[1] - logit[0] only while ``p`` is not
    saturated: a float32 probability reaches exactly 1.0 near a margin of 17, and every larger
    margin then maps to the same 27.63 (the clip). So the scores gistnet ranks on (training's
    ``evaluate.predict``, ``predict`` in torch and ONNX) are the logit margins themselves;
    this is for probabilities from elsewhere only.
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _PROBABILITY_EPS, 1 - _PROBABILITY_EPS)
    return np.log(p) - np.log1p(-p)


def rows(keys: list[str], patient_ids: list[str], labels, class_names: tuple[str, str], fold: int | None,
         model: str, probabilities, scores) -> list[Prediction]:
    """Prediction rows for one (fold, model); ``labels`` are 1 for ``class_names[0]`` (positive)."""
    labels = np.asarray(labels).astype(int).tolist()
    probabilities = np.asarray(probabilities, dtype=np.float64).tolist()
    scores = np.asarray(scores, dtype=np.float64).tolist()
    patient_ids = list(patient_ids) or [""] * len(keys)
    return [Prediction(k, pid, class_names[0] if y == 1 else class_names[1], fold, model, p, s)
            for k, pid, y, p, s in zip(keys, patient_ids, labels, probabilities, scores, strict=True)]


def _sort_key(p: Prediction):
    return (p.model, -1 if p.fold is None else p.fold, p.key)


def to_csv(predictions: list[Prediction]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for p in sorted(predictions, key=_sort_key):
        writer.writerow([p.key, p.patient_id, p.label, "" if p.fold is None else p.fold, p.model,
                         repr(p.probability), repr(p.score)])
    return buffer.getvalue().encode()


def from_csv(data: bytes) -> list[Prediction]:
    reader = csv.DictReader(io.StringIO(data.decode("utf-8")))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ValueError(f"predictions.csv: expected columns {','.join(COLUMNS)}, got {reader.fieldnames}")
    return [Prediction(r["key"], r["patient_id"], r["label"], int(r["fold"]) if r["fold"] else None, r["model"],
                       float(r["probability"]), float(r["score"])) for r in reader]


def write(store: Store, predictions: list[Prediction], key: str = FILENAME) -> None:
    store.write_bytes(key, to_csv(predictions))


def read(store: Store, key: str = FILENAME) -> list[Prediction]:
    return from_csv(store.read(key))
