"""Two models on the same images: DeLong's test, a paired bootstrap CI, McNemar's test.

No maintained Python library ships DeLong's test (scikit-learn, SciPy, statsmodels and
MONAI do not), so it is written here after Sun & Xu (2014), "Fast implementation of
DeLong's algorithm for comparing the areas under correlated receiver operating
characteristic curves", IEEE Signal Process Lett 21(11):1389-1393: midranks (SciPy's
``rankdata``) give every structural component in O(n log n). ``tests/test_compare.py``
checks it against the O(n^2) placement-value definition of DeLong, DeLong & Clarke-Pearson
(1988). The bootstrap is SciPy's and McNemar's exact test statsmodels'.

Every function takes an optional ``clusters`` (patient ids aligned with the images): when a
patient has more than one image, the AUC variance is Obuchowski's clustered one, the
bootstrap resamples patients and McNemar's test is Durkalski's clustered version with the
exact p of its sign-flip permutation over patients (``gistnet.evidence.clustered``). An interval that cannot be estimated (one positive image,
classes separated perfectly, no variation across resamples) has null bounds and a ``note``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.stats import bootstrap, norm, rankdata
from statsmodels.stats.contingency_tables import mcnemar

from gistnet.evidence import clustered

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
    k = scores.shape[0]
    if m < 2 or n < 2:  # a covariance of one value is undefined (numpy would warn and return NaN)
        return aucs, np.full((k, k), np.nan)
    cov = np.atleast_2d(np.cov(v_pos)) / m + np.atleast_2d(np.cov(v_neg)) / n
    return aucs, cov


def _auc_covariance(scores, labels, clusters) -> tuple[np.ndarray, np.ndarray, str]:
    """AUCs, covariance and method name: DeLong, or Obuchowski's clustered DeLong."""
    labels = np.asarray(labels).astype(int)
    groups = clustered.codes(clusters, len(labels))
    if groups is None:
        return *delong(scores, labels), "delong"
    return *clustered.obuchowski(scores, labels, groups), clustered.AUC_METHOD


def auc_covariance(scores, labels, clusters=None) -> tuple[np.ndarray, np.ndarray, str]:
    """AUCs of ``scores`` (models x images), their covariance and its method: DeLong's, or
    Obuchowski's clustered DeLong when a patient in ``clusters`` has several images (what
    ``delong_test`` and ``auc_interval`` use; ``ops/promotion.py``'s gate too)."""
    return _auc_covariance(scores, labels, clusters)


def _no_variance_reason(labels, clusters, method: str) -> str:
    labels = np.asarray(labels).astype(bool)
    if method == clustered.AUC_METHOD:
        groups = clustered.codes(clusters, len(labels))
        if min(len(set(groups[labels])), len(set(groups[~labels]))) < 2:
            return "fewer than 2 patients in a class: the clustered variance is not defined"
    elif min(labels.sum(), (~labels).sum()) < 2:
        return "one image in a class: the DeLong variance is not defined"
    return "the scores separate the classes perfectly: the variance is 0, so there is no interval"


def auc_interval(scores, labels, level: float, clusters=None) -> dict:
    """ROC AUC with a DeLong normal interval clipped to [0, 1] (Obuchowski's clustered variance
    with ``clusters``); nulls with a single class, null bounds and a note with no variance."""
    labels = np.asarray(labels).astype(int)
    groups = clustered.codes(clusters, len(labels))
    method = "delong" if groups is None else clustered.AUC_METHOD
    if labels.min(initial=1) == labels.max(initial=0):
        return {"value": None, "ci_low": None, "ci_high": None, "method": method,
                "note": "one class only: the AUC is not defined"}
    aucs, cov, method = _auc_covariance(np.asarray(scores, dtype=np.float64)[None, :], labels, clusters)
    auc, variance = float(aucs[0]), float(cov[0, 0])
    if not (math.isfinite(variance) and variance > 1e-15):
        return {"value": auc, "ci_low": None, "ci_high": None, "method": method,
                "note": _no_variance_reason(labels, clusters, method)}
    half = float(norm.ppf(0.5 + level / 2)) * math.sqrt(variance)
    return {"value": auc, "ci_low": max(0.0, auc - half), "ci_high": min(1.0, auc + half), "method": method}


def delong_test(scores_a, scores_b, labels, clusters=None) -> dict:
    """Two-sided test of equal AUCs on the same images (clustered by patient with ``clusters``);
    z and p are null when the difference has no variance (e.g. both models separate the
    classes perfectly)."""
    aucs, cov, method = _auc_covariance(np.vstack([scores_a, scores_b]), labels, clusters)
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if not variance > 1e-15:  # NaN too
        return {"z": None, "p": None, "method": method,
                "note": "the AUC difference has no variance on these images: not testable"}
    z = float((aucs[0] - aucs[1]) / math.sqrt(variance))
    return {"z": z, "p": float(2 * norm.sf(abs(z))), "method": method}


def _mann_whitney_auc(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """AUC along the last axis (batched): P(positive outranks negative), ties counting half."""
    m = positives.shape[-1]
    ranks = rankdata(np.concatenate([positives, negatives], axis=-1), axis=-1)
    return (ranks[..., :m].sum(axis=-1) - m * (m + 1) / 2) / (m * negatives.shape[-1])


def bootstrap_auc_difference(scores_a, scores_b, labels, level: float, seed: int,
                             n_resamples: int = BOOTSTRAP_RESAMPLES, clusters=None) -> dict:
    """AUC(a) - AUC(b) with a paired, stratified bootstrap percentile interval: positives and
    negatives are resampled separately (the class sizes stay fixed) and the same resampled
    images score both models. With ``clusters`` (a patient with several images) patients are
    resampled instead of images."""
    a, b, labels = np.asarray(scores_a, float), np.asarray(scores_b, float), np.asarray(labels).astype(bool)
    value = float(_mann_whitney_auc(a[labels], a[~labels]) - _mann_whitney_auc(b[labels], b[~labels]))
    groups = clustered.codes(clusters, len(labels))
    if groups is not None:
        low, high, stratified = clustered.bootstrap_auc_difference(a, b, labels, groups, level, seed, n_resamples)
        method = (f"paired {'stratified ' if stratified else ''}bootstrap resampling patients, percentile, "
                  f"{n_resamples} resamples")
        return _difference_interval(value, low, high, method)
    pa, na, pb, nb = a[labels], a[~labels], b[labels], b[~labels]
    if min(len(pa), len(na)) < 2:
        return {"value": value, "ci_low": None, "ci_high": None, "method": "paired stratified bootstrap",
                "note": "fewer than 2 images in a class: nothing to resample"}

    def difference(pos_idx, neg_idx, axis=-1):
        return _mann_whitney_auc(pa[pos_idx], na[neg_idx]) - _mann_whitney_auc(pb[pos_idx], nb[neg_idx])

    with warnings.catch_warnings():  # SciPy warns when every resample gives the same difference
        warnings.simplefilter("ignore")
        result = bootstrap((np.arange(len(pa)), np.arange(len(na))), difference, n_resamples=n_resamples,
                           confidence_level=level, method="percentile", vectorized=True,
                           rng=np.random.default_rng(seed))
    ci = result.confidence_interval
    return _difference_interval(value, float(ci.low), float(ci.high),
                                f"paired stratified bootstrap, percentile, {n_resamples} resamples")


def _difference_interval(value: float, low: float, high: float, method: str) -> dict:
    if math.isnan(low) and math.isnan(high):
        return {"value": value, "ci_low": None, "ci_high": None, "method": method,
                "note": "fewer than 2 patients in a class (or no resample with both classes): nothing to resample"}
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        return {"value": value, "ci_low": None, "ci_high": None, "method": method,
                "note": "the difference does not vary across the resamples: no interval"}
    return {"value": value, "ci_low": low, "ci_high": high, "method": method}


def mcnemar_test(correct_a, correct_b, clusters=None) -> dict:
    """McNemar's exact test, or, when a patient has several images, the clustered McNemar with its
    exact patient-level p (never below the exact test's on one image per patient)."""
    a = np.asarray(correct_a, bool)
    groups = clustered.codes(clusters, len(a))
    if groups is None:
        return mcnemar_exact(correct_a, correct_b)
    return clustered.mcnemar(correct_a, correct_b, groups)


def mcnemar_exact(correct_a, correct_b) -> dict:
    """McNemar's exact (binomial) test on the images exactly one of the two models got right."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    table = [[int((a & b).sum()), only_a], [only_b, int((~a & ~b).sum())]]
    result = mcnemar(table, exact=True)
    return {"statistic": float(result.statistic), "p": float(result.pvalue), "only_first_correct": only_a,
            "only_second_correct": only_b, "method": "exact (binomial)"}


def interpretation(first: str, second: str, p: float | None, alpha: float, what: str) -> str:
    """Honest wording: a large p is no evidence of a difference, never evidence of equivalence."""
    if p is None:
        return f"{what}: not testable (the difference has no variance on these images)"
    if p < alpha:
        return f"{what}: evidence that {first} and {second} differ (p = {p:.3g} < {alpha:g})"
    return (f"{what}: no evidence of a difference between {first} and {second} (p = {p:.3g}); "
            "this does not show that they are equivalent")


def compare(names: tuple[str, str], labels, scores: tuple, correct: tuple, level: float, seed: int,
            clusters=None, correct_class: tuple | None = None) -> dict:
    """The report's ``comparison`` section for two models scored on the same images (clustered
    by patient with ``clusters`` when a patient has several images). ``correct_class``: with K > 2
    classes, whether each model's most probable class is the true one; McNemar on those is added
    as ``mcnemar_multiclass`` (issue 27: multi-class accuracy compared, clustered)."""
    first, second = names
    test = delong_test(scores[0], scores[1], labels, clusters)
    alpha = 1 - level
    paired = mcnemar_test(correct[0], correct[1], clusters)
    auc_name = "ROC AUC (DeLong)" if test["method"] == "delong" else "ROC AUC (DeLong, clustered: Obuchowski)"
    section = {
        "models": [first, second],
        "n_images": int(len(labels)),
        "unit_of_analysis": clustered.unit_of_analysis(clusters, len(labels)),
        "delong": test,
        "auc_difference": bootstrap_auc_difference(scores[0], scores[1], labels, level, seed, clusters=clusters),
        "mcnemar": paired,
        "confidence_level": level,
        "interpretation": [
            interpretation(first, second, test["p"], alpha, auc_name),
            interpretation(first, second, paired["p"], alpha,
                           f"accuracy at the 0.5 threshold (McNemar, {paired['method']})"),
        ],
    }
    if correct_class is not None:
        multi = mcnemar_test(correct_class[0], correct_class[1], clusters)
        section["mcnemar_multiclass"] = multi
        section["interpretation"].append(interpretation(first, second, multi["p"], alpha,
                                                        f"multi-class accuracy (McNemar, {multi['method']})"))
    return section
