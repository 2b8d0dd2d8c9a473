"""Two models on the same images: DeLong's test, a paired bootstrap CI, McNemar's test.

No maintained Python library ships DeLong's test (scikit-learn, SciPy, statsmodels and
MONAI do not), so it is written here after Sun & Xu (2014), "Fast implementation of
DeLong's algorithm for comparing the areas under correlated receiver operating
characteristic curves", IEEE Signal Process Lett 21(11):1389-1393: midranks (SciPy's
``rankdata``) give every structural component in O(n log n). ``tests/test_compare.py``
checks it against the O(n^2) placement-value definition of DeLong, DeLong & Clarke-Pearson
(1988). The bootstrap is SciPy's and McNemar's exact test statsmodels'.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import bootstrap, norm, rankdata
from statsmodels.stats.contingency_tables import mcnemar

BOOTSTRAP_RESAMPLES = 2000


def delong(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix for ``scores`` (models x images), labels 1/0."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    labels = np.asarray(labels).astype(bool)
    positives, negatives = scores[:, labels], scores[:, ~labels]
    m, n = positives.shape[1], negatives.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong needs both classes")
    rank_pos = rankdata(positives, axis=1)
    rank_neg = rankdata(negatives, axis=1)
    rank_all = rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    aucs = rank_all[:, :m].sum(axis=1) / (m * n) - (m + 1) / (2 * n)
    v_pos = (rank_all[:, :m] - rank_pos) / n  # share of negatives each positive outranks
    v_neg = 1 - (rank_all[:, m:] - rank_neg) / m  # share of positives that outrank each negative
    cov = np.atleast_2d(np.cov(v_pos)) / m + np.atleast_2d(np.cov(v_neg)) / n
    return aucs, cov


def auc_interval(scores, labels, level: float) -> dict:
    """ROC AUC with a DeLong normal interval clipped to [0, 1]; nulls with a single class."""
    labels = np.asarray(labels).astype(int)
    if labels.min(initial=1) == labels.max(initial=0):
        return {"value": None, "ci_low": None, "ci_high": None, "method": "delong"}
    aucs, cov = delong(np.asarray(scores)[None, :], labels)
    auc, half = float(aucs[0]), norm.ppf(0.5 + level / 2) * math.sqrt(max(float(cov[0, 0]), 0.0))
    return {"value": auc, "ci_low": max(0.0, auc - half), "ci_high": min(1.0, auc + half), "method": "delong"}


def delong_test(scores_a, scores_b, labels) -> dict:
    """Two-sided test of equal AUCs on the same images; z and p are null when the
    difference has no variance (e.g. both models separate the classes perfectly)."""
    aucs, cov = delong(np.vstack([scores_a, scores_b]), labels)
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if not variance > 1e-15:
        return {"z": None, "p": None}
    z = float((aucs[0] - aucs[1]) / math.sqrt(variance))
    return {"z": z, "p": float(2 * norm.sf(abs(z)))}


def _mann_whitney_auc(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """AUC along the last axis (batched): P(positive outranks negative), ties counting half."""
    m = positives.shape[-1]
    ranks = rankdata(np.concatenate([positives, negatives], axis=-1), axis=-1)
    return (ranks[..., :m].sum(axis=-1) - m * (m + 1) / 2) / (m * negatives.shape[-1])


def bootstrap_auc_difference(scores_a, scores_b, labels, level: float, seed: int,
                             n_resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """AUC(a) - AUC(b) with a paired, stratified bootstrap percentile interval: positives and
    negatives are resampled separately (the class sizes stay fixed) and the same resampled
    images score both models."""
    a, b, labels = np.asarray(scores_a, float), np.asarray(scores_b, float), np.asarray(labels).astype(bool)
    pa, na, pb, nb = a[labels], a[~labels], b[labels], b[~labels]

    def difference(pos_idx, neg_idx, axis=-1):
        return _mann_whitney_auc(pa[pos_idx], na[neg_idx]) - _mann_whitney_auc(pb[pos_idx], nb[neg_idx])

    value = float(difference(np.arange(len(pa)), np.arange(len(na))))
    result = bootstrap((np.arange(len(pa)), np.arange(len(na))), difference, n_resamples=n_resamples,
                       confidence_level=level, method="percentile", vectorized=True,
                       rng=np.random.default_rng(seed))
    ci = result.confidence_interval
    return {"value": value, "ci_low": float(ci.low), "ci_high": float(ci.high),
            "method": f"paired stratified bootstrap, percentile, {n_resamples} resamples"}


def mcnemar_exact(correct_a, correct_b) -> dict:
    """McNemar's exact (binomial) test on the images exactly one of the two models got right."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    table = [[int((a & b).sum()), only_a], [only_b, int((~a & ~b).sum())]]
    result = mcnemar(table, exact=True)
    return {"statistic": float(result.statistic), "p": float(result.pvalue), "only_first_correct": only_a,
            "only_second_correct": only_b}


def interpretation(first: str, second: str, p: float | None, alpha: float, what: str) -> str:
    """Honest wording: a large p is no evidence of a difference, never evidence of equivalence."""
    if p is None:
        return f"{what}: not testable (the difference has no variance on these images)"
    if p < alpha:
        return f"{what}: evidence that {first} and {second} differ (p = {p:.3g} < {alpha:g})"
    return (f"{what}: no evidence of a difference between {first} and {second} (p = {p:.3g}); "
            "this does not show that they are equivalent")


def compare(names: tuple[str, str], labels, scores: tuple, correct: tuple, level: float, seed: int) -> dict:
    """The report's ``comparison`` section for two models scored on the same images."""
    first, second = names
    test = delong_test(scores[0], scores[1], labels)
    alpha = 1 - level
    exact = mcnemar_exact(correct[0], correct[1])
    return {
        "models": [first, second],
        "n_images": int(len(labels)),
        "delong": test,
        "auc_difference": bootstrap_auc_difference(scores[0], scores[1], labels, level, seed),
        "mcnemar": exact,
        "confidence_level": level,
        "interpretation": [
            interpretation(first, second, test["p"], alpha, "ROC AUC (DeLong)"),
            interpretation(first, second, exact["p"], alpha, "accuracy at the 0.5 threshold (McNemar, exact)"),
        ],
    }
