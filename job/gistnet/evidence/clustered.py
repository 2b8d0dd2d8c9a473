"""Patient-clustered statistics: intervals and tests when a patient contributes several images.

Images of one patient are not independent, so intervals that count every image as a new
observation are too narrow (repeating each image three times narrows them by about
sqrt(3)). When any patient has more than one image, gistnet keeps the image as the unit of
analysis and clusters by patient:

- proportions (sensitivity, specificity, PPV, NPV, accuracy): the configured binomial
  interval on the effective sample size n / d, where d is the design effect of Rao & Scott
  (1992), "A simple method for the analysis of clustered binary data", Biometrics
  48(2):577-585. d compares the cluster-robust variance of the proportion (statsmodels' OLS
  with ``cov_type="cluster"``: the ratio-estimator variance) with the binomial one; d >= 1
  is enforced (never narrower than the per-image interval). When the proportion is 0 or 1
  there is no within-patient variance to estimate; each patient then counts once. A proportion
  whose images are all of one patient has no interval (n/a, ``note`` says why), not one on an
  effective n of 1.
- ROC AUC and the DeLong test: Obuchowski (1997), "Nonparametric analysis of clustered ROC
  curve data", Biometrics 53(2):567-578: DeLong's structural components summed per patient.
  With one image per patient it is DeLong's variance exactly.
- the AUC difference: a paired bootstrap that resamples patients (stratified by class when
  every patient has one class), percentile interval (SciPy's ``bootstrap``).
- accuracy of two models: the clustered McNemar test of Durkalski et al. (2003), "Analysis
  of clustered matched-pair data", Stat Med 22(15):2417-2428, whose statistic is the
  standardised sum of the patients' discordance differences d_k; its p is the exact one of the
  sign-flip permutation of the d_k (the chi-square is only its large-sample approximation and
  is liberal with few discordant patients). With one image per patient it is McNemar's exact
  binomial test, and an extra image both models call alike changes nothing.

``clusters`` everywhere is a sequence of patient ids aligned with the images; an empty id
(an image with no patient id) is its own patient; ``None`` means independent images.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import rankdata
from statsmodels.stats.proportion import proportion_confint

PROPORTION_METHOD = "clustered by patient (Rao-Scott design effect)"
AUC_METHOD = "obuchowski"  # clustered DeLong
ONE_PATIENT = "all {n} images are of one patient: clustered by patient that is one observation, which has no interval"
MCNEMAR_METHOD = "Durkalski clustered McNemar, exact p (sign-flip permutation of the patients' differences)"


def codes(clusters, n: int) -> np.ndarray | None:
    """An integer patient index per image, or None when ``clusters`` is None or no patient has
    more than one image (then the images are independent and the per-image methods apply)."""
    if clusters is None:
        return None
    ids = list(clusters)
    if len(ids) != n:
        raise ValueError(f"clusters: {len(ids)} patient ids for {n} images")
    index: dict = {}
    out = np.array([index.setdefault(("id", str(c)) if c not in (None, "") else ("image", i), len(index))
                    for i, c in enumerate(ids)], dtype=np.int64)
    return out if len(index) < n else None


def unit_of_analysis(clusters, n: int) -> dict:
    """What one observation is, in words and numbers (``report.json`` ``unit_of_analysis``)."""
    ids = None if clusters is None else list(clusters)
    if ids is None or not any(c not in (None, "") for c in ids):
        return {"unit": "image", "clustered_by": None, "patients": None, "images": n,
                "text": f"per image, {n} images; no patient ids: the images are treated as independent"}
    patients = len({str(c) for c in ids if c not in (None, "")}) + sum(c in (None, "") for c in ids)
    if patients < n:
        return {"unit": "image", "clustered_by": "patient", "patients": patients, "images": n,
                "text": f"per image, clustered by patient: {patients} patients, {n} images"}
    return {"unit": "image", "clustered_by": None, "patients": patients, "images": n,
            "text": f"per image, one image per patient: {patients} patients, {n} images"}


def images_per_patient(clusters) -> dict | None:
    """Patients and images per patient (min, median, max) from patient ids; None without any id."""
    ids = [str(c) for c in (clusters or []) if c not in (None, "")]
    if not ids:
        return None
    counts = np.unique(np.array(ids), return_counts=True)[1]
    return {"patients": int(len(counts)), "images": int(len(ids)), "min": int(counts.min()),
            "median": float(np.median(counts)), "max": int(counts.max())}


# ---------------------------------------------------------------- proportions


def design_effect(successes, groups: np.ndarray) -> float | None:
    """Rao-Scott design effect of a proportion: cluster-robust variance / binomial variance;
    None when the proportion is 0 or 1 (no variance) or there is one patient."""
    import statsmodels.api as sm

    y = np.asarray(successes, dtype=np.float64)
    n, p = len(y), float(y.mean())
    if not 0 < p < 1 or len(np.unique(groups)) < 2:
        return None
    fit = sm.OLS(y, np.ones(n)).fit(cov_type="cluster", cov_kwds={"groups": groups})
    return float(fit.bse[0] ** 2 / (p * (1 - p) / n))


def proportion(successes, groups: np.ndarray, statsmodels_method: str, level: float) -> dict:
    """A proportion over images, its interval clustered by patient (``groups``, one per image)."""
    y = np.asarray(successes, dtype=bool)
    n, k = len(y), int(len(np.unique(groups)))
    if n == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "numerator": 0, "denominator": 0}
    p = float(y.mean())
    if k == 1:  # an interval on an effective n of 1 would describe one observation as a sample
        return {"value": p, "ci_low": None, "ci_high": None, "numerator": int(y.sum()), "denominator": n,
                "patients": 1, "note": ONE_PATIENT.format(n=n)}
    d = design_effect(y, groups)
    n_eff = float(k) if d is None else n / max(d, 1.0)
    low, high = proportion_confint(p * n_eff, n_eff, alpha=1 - level, method=statsmodels_method)
    return {"value": p, "ci_low": float(min(max(low, 0.0), 1.0)), "ci_high": float(min(max(high, 0.0), 1.0)),
            "numerator": int(y.sum()), "denominator": n, "patients": k, "effective_n": n_eff}


# ---------------------------------------------------------------- ROC AUC


def obuchowski(scores, labels, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their clustered covariance (models x models) for ``scores`` (models x images).

    Entries are NaN when fewer than two patients have a positive (or a negative) image."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    labels = np.asarray(labels).astype(bool)
    groups = np.asarray(groups)
    positives, negatives = scores[:, labels], scores[:, ~labels]
    m, n = positives.shape[1], negatives.shape[1]
    if m == 0 or n == 0:
        raise ValueError("the clustered AUC needs both classes")
    rank_all = rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    v10 = (rank_all[:, :m] - rankdata(positives, axis=1)) / n  # per positive image: share of negatives below it
    v01 = 1 - (rank_all[:, m:] - rankdata(negatives, axis=1)) / m  # per negative: share of positives above it
    aucs = v10.mean(axis=1)
    _, g = np.unique(groups, return_inverse=True)
    total = int(g.max()) + 1
    gp, gn = g[labels], g[~labels]
    m_i, n_i = np.bincount(gp, minlength=total), np.bincount(gn, minlength=total)
    d10 = np.array([np.bincount(gp, weights=row, minlength=total) for row in v10]) - m_i * aucs[:, None]
    d01 = np.array([np.bincount(gn, weights=row, minlength=total) for row in v01]) - n_i * aucs[:, None]
    i10, i01 = int((m_i > 0).sum()), int((n_i > 0).sum())
    k = scores.shape[0]
    if i10 < 2 or i01 < 2:
        return aucs, np.full((k, k), np.nan)
    s10 = i10 / ((i10 - 1) * m) * (d10 @ d10.T)
    s01 = i01 / ((i01 - 1) * n) * (d01 @ d01.T)
    s11 = total / (total - 1) * (d10 @ d01.T)
    return aucs, s10 / m + s01 / n + (s11 + s11.T) / (m * n)


# ---------------------------------------------------------------- paired bootstrap over patients


def bootstrap_auc_difference(a, b, labels, groups: np.ndarray, level: float, seed: int, n_resamples: int):
    """Percentile interval of AUC(a) - AUC(b) resampling patients: each draw weights every image
    by how often its patient was drawn. Returns (low, high, stratified)."""
    from scipy.stats import bootstrap

    labels = np.asarray(labels).astype(bool)
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    k = int(g.max()) + 1
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    # pairwise comparisons, positives x negatives: 1 when the positive outranks, 1/2 on a tie
    psi_a = (a[pos][:, None] > a[neg][None, :]) + 0.5 * (a[pos][:, None] == a[neg][None, :])
    psi_b = (b[pos][:, None] > b[neg][None, :]) + 0.5 * (b[pos][:, None] == b[neg][None, :])
    psi = psi_a - psi_b
    gp, gn = g[pos], g[neg]
    patient_class = np.bincount(g, weights=labels.astype(float), minlength=k) / np.bincount(g, minlength=k)
    stratified = bool(np.all((patient_class == 0) | (patient_class == 1)))

    def counts(drawn):
        drawn = np.atleast_2d(drawn)
        return np.stack([np.bincount(row, minlength=k) for row in drawn]).astype(np.float64)

    def difference(*samples, axis=-1):
        w = sum(counts(s) for s in samples)  # draws x patients
        wp, wn = w[:, gp], w[:, gn]
        total = wp.sum(axis=1) * wn.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return ((wp @ psi) * wn).sum(axis=1) / total

    if stratified:
        data = (np.flatnonzero(patient_class == 1), np.flatnonzero(patient_class == 0))
    else:
        data = (np.arange(k),)
    if min(len(d) for d in data) < 2:  # nothing to resample
        return float("nan"), float("nan"), stratified
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = bootstrap(data, difference, n_resamples=n_resamples, confidence_level=level, method="percentile",
                           vectorized=True, rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high), stratified


# ---------------------------------------------------------------- McNemar


def mcnemar(correct_a, correct_b, groups: np.ndarray) -> dict:
    """Clustered McNemar: Durkalski's statistic (sum_k d_k)^2 / sum_k d_k^2, d_k = b_k - c_k the
    images of patient k only the first (second) model got right, with the exact p of the sign-flip
    permutation test of the d_k (``sign_flip_p``), not its chi-square approximation."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    k = int(g.max()) + 1
    only_a, only_b = np.bincount(g, weights=(a & ~b).astype(float), minlength=k), \
        np.bincount(g, weights=(~a & b).astype(float), minlength=k)
    diff = only_a - only_b
    denominator = float((diff ** 2).sum())
    result = {"only_first_correct": int(only_a.sum()), "only_second_correct": int(only_b.sum()),
              "method": MCNEMAR_METHOD}
    if denominator == 0:
        return {**result, "statistic": 0.0, "p": 1.0,
                "note": "no patient with more images right by one model than by the other: no evidence either way"}
    statistic = float(diff.sum() ** 2 / denominator)
    return {**result, "statistic": statistic, "p": sign_flip_p(diff)}


def sign_flip_p(differences) -> float:
    """Exact two-sided p of the paired sign-flip permutation test of integer per-patient
    differences: under H0 each patient's d_k is as likely to be -d_k, so p = P(|sum_k s_k d_k| >=
    |sum_k d_k|) over all 2^k sign vectors s. The distribution is built by convolution (patients
    with the same |d_k| together, binomially), exact for any number of patients. With every
    |d_k| = 1 it is McNemar's exact binomial test; patients with d_k = 0 change nothing."""
    from scipy.stats import binom

    d = np.abs(np.rint(np.asarray(differences, dtype=np.float64))).astype(np.int64)
    observed, d = abs(int(np.rint(np.sum(differences)))), d[d != 0]
    pmf = np.ones(1)  # of T, the sum of the |d_k| whose sign is +
    for value, count in zip(*np.unique(d, return_counts=True)):
        step = np.zeros(int(value * count) + 1)
        step[::value] = binom.pmf(np.arange(count + 1), count, 0.5)
        pmf = np.convolve(pmf, step)
    total = int(d.sum())
    s = np.abs(2 * np.arange(total + 1) - total)  # |sum s_k d_k| = |2 T - total|
    return float(min(1.0, pmf[s >= observed].sum()))
