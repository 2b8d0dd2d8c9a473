"""``predictions.csv``: one row per validation image and model, the raw material of every
number in the report (and of a reviewer's own re-analysis).

Columns: ``key`` (object key under the data URI), ``patient_id`` (empty without a
manifest), ``label`` (the true class name), ``fold`` (0..K-1 in a k-fold run; empty in a
hold-out run, whose validation set is not a fold), ``model``, ``probability`` (P(positive
class)) and ``score`` (the logit difference positive - negative: the same ranking as the
probability, without its saturation at 0 and 1, so ROC and DeLong use it). With K classes the
endpoint is the positive class against every other one: ``probability`` is its softmax mass
and ``score`` log P(positive) - log P(rest) (``multiclass.endpoint``).

Then one ``p_<class>`` column per class, the softmax of the network's K outputs in their order
(``config.head_order``: the other classes, then the positive class last), so the multi-class
evidence and the lesion scores can be recomputed; and ``lesion_id`` when the manifest gave
lesion ids (without it the lesion is the patient, else the image: ``lesions.lesion_ids``).

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
    class_probabilities: tuple[tuple[str, float], ...] = ()  # (class, P(class)) in head order
    lesion_id: str = ""


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


def class_probabilities(logits) -> np.ndarray:
    """The softmax of N x K logits in float64: the ``p_<class>`` columns."""
    from scipy.special import softmax

    return softmax(np.asarray(logits, dtype=np.float64), axis=1)


def rows(keys: list[str], patient_ids: list[str], labels, class_names: tuple[str, str], fold: int | None,
         model: str, probabilities, scores, logits=None, head: tuple[str, ...] | None = None,
         lesion_ids: list[str] | None = None) -> list[Prediction]:
    """Prediction rows for one (fold, model). Without ``head`` ``labels`` are 1 for
    ``class_names[0]`` (positive), 0 for ``class_names[1]``; with ``head`` (``data.head_classes``)
    label i is ``head[i]`` and ``logits`` (N x K, head order) give the ``p_<class>`` columns."""
    labels = np.asarray(labels).astype(int).tolist()
    probabilities = np.asarray(probabilities, dtype=np.float64).tolist()
    scores = np.asarray(scores, dtype=np.float64).tolist()
    patient_ids = list(patient_ids) or [""] * len(keys)
    lesions = list(lesion_ids) if lesion_ids else [""] * len(keys)
    if head is None:
        names = [class_names[0] if y == 1 else class_names[1] for y in labels]
    else:
        names = [head[y] if y >= 0 else "" for y in labels]
    per_class = [()] * len(keys)
    if logits is not None and head is not None:
        per_class = [tuple(zip(head, row)) for row in class_probabilities(logits).tolist()]
    return [Prediction(k, pid, name, fold, model, p, s, c, lid)
            for k, pid, name, p, s, c, lid in zip(keys, patient_ids, names, probabilities, scores, per_class, lesions,
                                                  strict=True)]


def extra_columns(predictions: list[Prediction]) -> tuple[str, ...]:
    """The columns after ``COLUMNS``: ``p_<class>`` in head order, then ``lesion_id`` when any row has one."""
    classes = next((tuple(c for c, _ in p.class_probabilities) for p in predictions if p.class_probabilities), ())
    return tuple(f"p_{c}" for c in classes) + (("lesion_id",) if any(p.lesion_id for p in predictions) else ())


def _sort_key(p: Prediction):
    return (p.model, -1 if p.fold is None else p.fold, p.key)


def to_csv(predictions: list[Prediction]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    extra = extra_columns(predictions)
    n_classes = sum(1 for c in extra if c.startswith("p_"))
    writer.writerow(COLUMNS + extra)
    for p in sorted(predictions, key=_sort_key):
        if len(p.class_probabilities) != n_classes:
            raise ValueError(f"predictions.csv: row {p.key!r} has {len(p.class_probabilities)} class probabilities, "
                             f"the others {n_classes}")
        writer.writerow([p.key, p.patient_id, p.label, "" if p.fold is None else p.fold, p.model,
                         repr(p.probability), repr(p.score), *(repr(v) for _, v in p.class_probabilities),
                         *((p.lesion_id,) if "lesion_id" in extra else ())])
    return buffer.getvalue().encode()


def from_csv(data: bytes) -> list[Prediction]:
    reader = csv.DictReader(io.StringIO(data.decode("utf-8")))
    names = tuple(reader.fieldnames or ())
    extra = names[len(COLUMNS):]
    if names[:len(COLUMNS)] != COLUMNS or any(not (c.startswith("p_") or c == "lesion_id") for c in extra):
        raise ValueError(f"predictions.csv: expected columns {','.join(COLUMNS)}[,p_<class>...][,lesion_id], "
                         f"got {reader.fieldnames}")
    classes = [c for c in extra if c.startswith("p_")]
    return [Prediction(r["key"], r["patient_id"], r["label"], int(r["fold"]) if r["fold"] else None, r["model"],
                       float(r["probability"]), float(r["score"]),
                       tuple((c[2:], float(r[c])) for c in classes), r.get("lesion_id") or "") for r in reader]


def write(store: Store, predictions: list[Prediction], key: str = FILENAME) -> None:
    store.write_bytes(key, to_csv(predictions))


def read(store: Store, key: str = FILENAME) -> list[Prediction]:
    return from_csv(store.read(key))
