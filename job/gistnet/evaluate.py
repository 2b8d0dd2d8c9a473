"""Evaluation: a model's loss and predictions on a held-out set, then its diagnostic table."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, roc_curve

from gistnet import compare, predictions, stats


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
            preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy (a device tensor) and P(positive) per image, in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    probabilities = []
    for start in range(0, len(images), batch_size):
        x = preprocess(images[start:start + batch_size])
        y = labels[start:start + batch_size]
        logits = model(x).float()
        loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        probabilities.append(logits.softmax(dim=1)[:, 1])
    return loss_sum, torch.cat(probabilities)


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
                      scores=None) -> dict:
    """Confusion matrix, the five metrics with intervals, and ROC AUC with DeLong's interval
    (ranked by ``scores``, the logit margins; derived from the probabilities when not given)."""
    y = _numpy(labels).astype(int)
    p = _numpy(probabilities, np.float64)
    s = predictions.scores_from_probabilities(p) if scores is None else _numpy(scores, np.float64)
    cm = confusion(y, p, threshold)
    return {
        "threshold": threshold,
        "confusion_matrix": cm,
        "ci_method": ci_method,
        "confidence_level": level,
        "metrics": stats.diagnostic_table(cm["tp"], cm["fp"], cm["tn"], cm["fn"], ci_method, level),
        "roc_auc": compare.auc_interval(s, y, level),
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
    y = _numpy(labels).astype(int)
    if y.min() == y.max():
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(y, _numpy(scores, np.float64))
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}
