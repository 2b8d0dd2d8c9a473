"""K classes: the clinical endpoint (positive vs every other class) and the multi-class evidence beside it.

With K > 2 tumour types one network has a K-way head; the decision clinicians act on is still
binary (resect or survey: GIST vs non-GIST), so the endpoint's score is P(positive), the
softmax mass of the positive class, and its logit margin log P(positive) - log P(rest). Every
binary statistic gistnet already reports applies to that score unchanged.

Beside it, the multi-class evidence, each number a maintained library's where one exists:
the K x K confusion matrix, balanced accuracy and Cohen's kappa (scikit-learn); one-vs-rest
sensitivity, specificity, PPV, NPV and AUC per class with intervals (``stats`` and
``compare``: clustered by patient when a patient has several images); per-class calibration
(``calibration``); the multi-class Brier score (Brier 1950: the mean over images of the
squared distance between the probability vector and the one-hot truth).

Kappa is **unweighted**: the tumour types are not ordered (a schwannoma is not "between" a
GIST and a leiomyoma), so the linear or quadratic weights meant for ordinal scales would
reward near misses that do not exist.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp, softmax
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, confusion_matrix

from gistnet.evidence import calibration, clustered, compare, stats

BOOTSTRAP_RESAMPLES = 2000
KAPPA = "Cohen's kappa, unweighted (the classes are not ordered)"


def probabilities(logits) -> np.ndarray:
    """Softmax of (images, K) logits, in float64."""
    return softmax(np.asarray(logits, dtype=np.float64), axis=1)


def endpoint(logits, positive: int) -> tuple[np.ndarray, np.ndarray]:
    """P(positive) and its logit margin log P(positive) - log P(every other class), per image.

    The margin is computed from the logits (log-sum-exp), not from the probability, so a
    saturated P(positive) of 1.0 in float still ranks: AUCs and thresholds use the margin."""
    z = np.asarray(logits, dtype=np.float64)
    others = np.delete(z, positive, axis=1)
    margin = z[:, positive] - logsumexp(others, axis=1)
    return probabilities(z)[:, positive], margin


def brier(labels, probs) -> float:
    """Multi-class Brier score: mean over images of sum_k (p_k - [y = k])^2 (0 best, 2 worst)."""
    p = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(p.shape[1])[np.asarray(labels, int)]
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def _confusion(labels, predicted, k: int) -> np.ndarray:
    return np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)


def fast_balanced_accuracy(labels, predicted, k: int) -> float:
    """scikit-learn's balanced accuracy (mean recall over the classes present), from a bincount:
    the bootstrap calls it thousands of times."""
    c = _confusion(labels, predicted, k)
    rows = c.sum(axis=1)
    return float((np.diag(c)[rows > 0] / rows[rows > 0]).mean())


def fast_kappa(labels, predicted, k: int) -> float:
    """scikit-learn's unweighted Cohen's kappa from a bincount (nan when chance agreement is 1)."""
    c = _confusion(labels, predicted, k).astype(float)
    n = c.sum()
    observed, expected = np.trace(c) / n, (c.sum(axis=0) * c.sum(axis=1)).sum() / n**2
    return float((observed - expected) / (1 - expected)) if expected < 1 else float("nan")


def _bootstrap(statistic, labels, predicted, clusters, level: float, seed: int) -> tuple[float | None, float | None]:
    """Percentile interval resampling patients (or images without repeated patients)."""
    groups = clustered.codes(clusters, len(labels))
    units = np.arange(len(labels)) if groups is None else groups
    ids = np.unique(units)
    members = [np.flatnonzero(units == u) for u in ids]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        pick = np.concatenate([members[i] for i in rng.integers(0, len(ids), len(ids))])
        if len(np.unique(labels[pick])) < 2:
            continue
        values.append(statistic(labels[pick], predicted[pick]))
    values = np.asarray([v for v in values if np.isfinite(v)])
    if len(values) < BOOTSTRAP_RESAMPLES // 2 or values.max() - values.min() <= 0:
        return None, None
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def _with_interval(value, low, high, method) -> dict:
    out = {"value": float(value), "ci_low": low, "ci_high": high, "method": method}
    if low is None:
        out["note"] = "too few patients (or no variation across resamples) for an interval"
    return out


def summary(labels, logits, classes: tuple[str, ...], ci_method: str = "wilson", level: float = 0.95,
            clusters=None, seed: int = 0) -> dict:
    """``report.json``'s ``multiclass`` object for one model: labels are class indices into ``classes``."""
    y = np.asarray(labels, int)
    k = len(classes)
    p = probabilities(logits)
    predicted = p.argmax(axis=1)
    counts = confusion_matrix(y, predicted, labels=list(range(k)))
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts, dtype=float), where=rows > 0)
    per_class, aucs = {}, []
    for c, name in enumerate(classes):
        truth, called = y == c, predicted == c
        metrics = stats.diagnostic_metrics(truth, called, ci_method, level, clusters)
        auc = compare.auc_interval(p[:, c], truth, level, clusters)
        margin = np.log(np.clip(p[:, c], 1e-300, None)) - np.log(np.clip(1 - p[:, c], 1e-300, None))
        per_class[name] = {**{m: metrics[m] for m in ("sensitivity", "specificity", "ppv", "npv")}, "auc": auc,
                           "calibration": {key: v for key, v in
                                           calibration.calibration(truth, p[:, c], margin).items() if key != "bins"},
                           "images": int(truth.sum())}
        if auc["value"] is not None:
            aucs.append(auc["value"])
    accuracy = stats.diagnostic_metrics(np.ones_like(y), y == predicted, ci_method, level, clusters)["accuracy"]
    balanced = balanced_accuracy_score(y, predicted)
    kappa = cohen_kappa_score(y, predicted)
    groups_note = "patients" if clustered.codes(clusters, len(y)) is not None else "images"
    boot = f"bootstrap resampling {groups_note}, percentile, {BOOTSTRAP_RESAMPLES} resamples"
    return {"classes": list(classes), "confusion": counts.tolist(), "confusion_normalised": normalised.tolist(),
            "per_class": per_class,
            "auc_ovr": {name: per_class[name]["auc"] for name in classes},
            "macro_auc": float(np.mean(aucs)) if len(aucs) == k else None,
            "accuracy": accuracy,
            "balanced_accuracy": _with_interval(balanced, *_bootstrap(
                lambda a, b: fast_balanced_accuracy(a, b, k), y, predicted, clusters, level, seed), boot),
            "kappa": {**_with_interval(kappa, *_bootstrap(lambda a, b: fast_kappa(a, b, k), y, predicted, clusters,
                                                          level, seed), boot), "definition": KAPPA},
            "brier": brier(y, p)}


def accuracy_comparison(labels, logits_a, logits_b, clusters=None) -> dict:
    """McNemar on correct/incorrect of two models' multi-class calls (clustered when patients repeat)."""
    y = np.asarray(labels, int)
    right_a = probabilities(logits_a).argmax(axis=1) == y
    right_b = probabilities(logits_b).argmax(axis=1) == y
    return compare.mcnemar_test(right_a, right_b, clusters)
