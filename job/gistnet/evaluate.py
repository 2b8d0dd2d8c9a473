"""Evaluation: a model's loss and predictions on a held-out set, then its diagnostic table."""

from __future__ import annotations

from typing import NamedTuple

import torch
from sklearn.metrics import confusion_matrix, roc_auc_score

from gistnet import stats


class Predictions(NamedTuple):
    """What a model says about a held-out set, all on the images' device."""

    loss_sum: torch.Tensor  # summed cross-entropy, a 0-d tensor
    probabilities: torch.Tensor  # P(positive) per image: for the threshold and per-image outputs
    margins: torch.Tensor  # logit_positive - logit_negative per image: for ranking (ROC, AUC)


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
    probabilities, margins = [], []
    for start in range(0, len(images), batch_size):
        x = preprocess(images[start:start + batch_size])
        y = labels[start:start + batch_size]
        logits = model(x).float()
        loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        probabilities.append(logits.softmax(dim=1)[:, 1])
        margins.append(logits[:, 1] - logits[:, 0])
    return Predictions(loss_sum, torch.cat(probabilities), torch.cat(margins))


def diagnostic_report(labels, probabilities, ci_method: str, level: float, threshold: float = 0.5,
                      scores=None) -> dict:
    """Confusion matrix (``probabilities >= threshold``), the five metrics with intervals,
    and ROC AUC with a Hanley-McNeil interval, ranked on ``scores`` (the logit margins;
    the probabilities when none are given)."""
    y = labels.cpu().numpy().astype(int)
    p = probabilities.detach().float().cpu().numpy()
    ranking = p if scores is None else scores.detach().double().cpu().numpy()
    predicted = (p >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, predicted, labels=[0, 1]).ravel())
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos and n_neg:
        auc = float(roc_auc_score(y, ranking))
        low, high = stats.auc_interval(auc, n_pos, n_neg, level)
        roc = {"value": auc, "ci_low": low, "ci_high": high, "method": "hanley-mcneil"}
    else:
        roc = {"value": None, "ci_low": None, "ci_high": None, "method": "hanley-mcneil"}
    return {
        "threshold": threshold,
        "confusion_matrix": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        "ci_method": ci_method,
        "confidence_level": level,
        "metrics": stats.diagnostic_table(tp, fp, tn, fn, ci_method, level),
        "roc_auc": roc,
    }


def roc_curve_points(labels, scores) -> dict:
    """The ROC curve of ``scores`` (the logit margins), as plain lists for the report."""
    from sklearn.metrics import roc_curve

    y = labels.cpu().numpy().astype(int)
    if y.min() == y.max():
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(y, scores.detach().double().cpu().numpy())
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}
