"""Evaluation: a model's loss and predictions on a held-out set, then its diagnostic table."""

from __future__ import annotations

import torch
from sklearn.metrics import confusion_matrix, roc_auc_score

from gistnet import stats


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


def diagnostic_report(labels, probabilities, ci_method: str, level: float, threshold: float = 0.5) -> dict:
    """Confusion matrix, the five metrics with intervals, and ROC AUC with a Hanley-McNeil interval."""
    y = labels.cpu().numpy().astype(int)
    p = probabilities.detach().float().cpu().numpy()
    predicted = (p >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, predicted, labels=[0, 1]).ravel())
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos and n_neg:
        auc = float(roc_auc_score(y, p))
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


def roc_curve_points(labels, probabilities) -> dict:
    from sklearn.metrics import roc_curve

    y = labels.cpu().numpy().astype(int)
    if y.min() == y.max():
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(y, probabilities.detach().float().cpu().numpy())
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}
