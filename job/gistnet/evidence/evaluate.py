"""Evaluation: a model's loss and predictions on a held-out set, then its diagnostic table."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, roc_curve

from gistnet.evidence import clustered
from gistnet.evidence import compare
from gistnet.evidence import stats


class Predictions(NamedTuple):
    """What a model says about a held-out set, all on the images' device."""

    loss_sum: torch.Tensor  # summed cross-entropy, a 0-d tensor
    probabilities: torch.Tensor  # P(positive) per image: for the threshold and per-image outputs
    margins: torch.Tensor  # logit_positive - logit_negative per image: for ranking (ROC, AUC)
    logits: torch.Tensor | None = None  # N x K fp32, in data.head_classes order (p_<class>, lesions)

    def correct(self, labels: torch.Tensor) -> torch.Tensor:
        """Which calls are right: P(positive) >= 0.5 with two classes (as always), the argmax with K."""
        if self.logits is None or self.logits.shape[1] == 2:
            return (self.probabilities >= 0.5).long() == labels
        return self.logits.argmax(dim=1) == labels


class Scores(tuple):
    """(P(positive), logit margin) of a batch, unpacked as two values as always, with the N x K
    logits behind them (head order) as ``.logits`` for the ``p_<class>`` columns."""

    logits: torch.Tensor

    def __new__(cls, probability, margin, logits):
        scores = super().__new__(cls, (probability, margin))
        scores.logits = logits
        return scores


def endpoint_labels(labels, k: int):
    """1 for the positive class, 0 for every other: the endpoint's labels from class indices
    (``config.head_order``: the positive class is the last of ``k``). Two classes: unchanged."""
    if k == 2:
        return labels
    return (labels == k - 1).long() if isinstance(labels, torch.Tensor) else (np.asarray(labels) == k - 1).astype(int)


def endpoint_scores(logits: torch.Tensor, positive: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """P(positive) and the logit margin from N x K logits, in torch: ``multiclass.endpoint``'s rule
    (the softmax mass of the positive class; log P(positive) - log P(every other class)).
    With two classes exactly the old ``softmax[:, 1]`` and ``logit_1 - logit_0``. ``positive``
    defaults to the last output (``config.head_order`` puts the positive class last)."""
    k = logits.shape[1]
    positive = k - 1 if positive is None else positive
    probability = logits.softmax(dim=1)[:, positive]
    if k == 2:
        return probability, logits[:, positive] - logits[:, 1 - positive]
    others = torch.cat([logits[:, :positive], logits[:, positive + 1:]], dim=1)
    return probability, logits[:, positive] - torch.logsumexp(others, dim=1)


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
            preprocess) -> Predictions:
    """The model's loss and scores on a held-out set, in eval mode and fp32.

    The margin ranks images like the probability, but keeps its order where the softmax
    saturates: a confident model gives many probabilities of exactly 1.0 (ties that blunt
    the ROC), while their margins still differ.
    """
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    probabilities, margins, all_logits = [], [], []
    for start in range(0, len(images), batch_size):
        x = preprocess(images[start:start + batch_size])
        y = labels[start:start + batch_size]
        logits = model(x).float()
        loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        probability, margin = endpoint_scores(logits)
        probabilities.append(probability)
        margins.append(margin)
        all_logits.append(logits)
    return Predictions(loss_sum, torch.cat(probabilities), torch.cat(margins), torch.cat(all_logits))


def _numpy(values, dtype=None):
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        values = (values.float() if values.dtype in (torch.float16, torch.bfloat16) else values).numpy()
    return np.asarray(values, dtype=dtype)


def confusion(labels, probabilities, threshold: float = 0.5) -> dict:
    """TP/FP/TN/FN calling GIST when P(GIST) >= ``threshold``."""
    y = _numpy(labels).astype(int)
    predicted = (_numpy(probabilities, np.float64) >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, predicted, labels=[0, 1]).ravel())
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn}


def diagnostic_report(labels, probabilities, ci_method: str, level: float, threshold: float = 0.5,
                      scores=None, clusters=None) -> dict:
    """Confusion matrix, the five metrics with intervals, and ROC AUC with DeLong's interval
    (ranked by ``scores``, the logit margins of ``predict``; the probabilities when none are given).

    ``clusters``: patient ids aligned with the images; when a patient has several images every
    interval is clustered by patient. ``unit_of_analysis`` says which applied."""
    y = _numpy(labels).astype(int)
    p = _numpy(probabilities, np.float64)
    s = p if scores is None else _numpy(scores, np.float64)
    cm = confusion(y, p, threshold)
    return {
        "threshold": threshold,
        "confusion_matrix": cm,
        "ci_method": ci_method,
        "confidence_level": level,
        "unit_of_analysis": clustered.unit_of_analysis(clusters, len(y)),
        "metrics": stats.diagnostic_metrics(y, p >= threshold, ci_method, level, clusters),
        "roc_auc": compare.auc_interval(s, y, level, clusters),
    }


def youden_threshold(labels, probabilities) -> float:
    """The probability threshold maximising sensitivity + specificity - 1 (Youden's J) on
    these images; meant for training images only, so it is never tuned on validation."""
    y = _numpy(labels).astype(int)
    if y.min() == y.max():
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, _numpy(probabilities, np.float64))
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def roc_curve_points(labels, scores) -> dict:
    """The ROC curve of ``scores`` (the logit margins), as plain lists for the report."""
    y = _numpy(labels).astype(int)
    if y.min() == y.max():
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(y, _numpy(scores, np.float64))
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}
