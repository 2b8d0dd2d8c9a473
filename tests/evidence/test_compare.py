"""DeLong (fast, Sun & Xu) against the O(n^2) placement-value definition; bootstrap and McNemar."""

import warnings

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from gistnet.evidence import compare


def _psi(x, y):
    return 1.0 if x > y else 0.5 if x == y else 0.0


def slow_delong(scores, labels):
    """DeLong, DeLong & Clarke-Pearson (1988) written from the definition: placement values
    V10 (per positive) and V01 (per negative), then S = S10/m + S01/n."""
    labels = np.asarray(labels).astype(bool)
    k = len(scores)
    v10, v01, aucs = [], [], []
    for s in scores:
        pos, neg = s[labels], s[~labels]
        v10.append([np.mean([_psi(x, y) for y in neg]) for x in pos])
        v01.append([np.mean([_psi(x, y) for x in pos]) for y in neg])
        aucs.append(np.mean(v10[-1]))
    m, n = labels.sum(), (~labels).sum()
    s10 = np.array([[np.sum((np.array(v10[i]) - aucs[i]) * (np.array(v10[j]) - aucs[j])) / (m - 1)
                     for j in range(k)] for i in range(k)])
    s01 = np.array([[np.sum((np.array(v01[i]) - aucs[i]) * (np.array(v01[j]) - aucs[j])) / (n - 1)
                     for j in range(k)] for i in range(k)])
    return np.array(aucs), s10 / m + s01 / n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_delong_matches_the_placement_value_definition(seed):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(23), np.zeros(31)].astype(int)
    a = labels * 1.0 + rng.normal(size=54)
    b = np.round(labels * 0.6 + rng.normal(size=54), 1)  # rounding makes ties
    fast_auc, fast_cov = compare.delong(np.vstack([a, b]), labels)
    slow_auc, slow_cov = slow_delong([a, b], labels)
    np.testing.assert_allclose(fast_auc, slow_auc, atol=1e-12)
    np.testing.assert_allclose(fast_cov, slow_cov, atol=1e-12)
    np.testing.assert_allclose(fast_auc, [roc_auc_score(labels, a), roc_auc_score(labels, b)], atol=1e-12)
    test = compare.delong_test(a, b, labels)
    z = (slow_auc[0] - slow_auc[1]) / np.sqrt(slow_cov[0, 0] + slow_cov[1, 1] - 2 * slow_cov[0, 1])
    assert test["z"] == pytest.approx(z) and test["p"] == pytest.approx(2 * norm.sf(abs(z)))


def test_auc_interval_and_degenerate_cases():
    labels = np.array([1, 1, 1, 0, 0, 0])
    ci = compare.auc_interval([0.9, 0.8, 0.3, 0.4, 0.2, 0.1], labels, 0.95)
    assert ci["method"] == "delong" and ci["value"] == pytest.approx(8 / 9)
    assert 0 <= ci["ci_low"] < ci["value"] < ci["ci_high"] <= 1
    assert compare.auc_interval([0.1, 0.2], [1, 1], 0.95)["value"] is None
    perfect = np.array([3.0, 2.0, 1.5, -1.0, -2.0, -3.0])
    test = compare.delong_test(perfect, perfect * 2, labels)
    assert (test["z"], test["p"]) == (None, None) and "not testable" in test["note"]


def test_a_degenerate_auc_interval_is_na_with_its_reason_and_no_numpy_warning():
    """One positive: DeLong's variance is undefined (numpy warned, and 0.000-1.000 was shown);
    perfect separation: variance 0 (1.000-1.000 was shown). Both are n/a with the reason."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = compare.auc_interval([0.9, 0.2, 0.4, 0.1, 0.3], [1, 0, 0, 0, 0], 0.95)
        perfect = compare.auc_interval([3.0, 2.0, -1.0, -2.0], [1, 1, 0, 0], 0.95)
        ddp = compare.auc_interval([0.9, 0.8, 0.7, 0.2, 0.1], [1, 1, 1, 0, 0], 0.95)  # 5 images, separated
    assert one["value"] == 1.0 and one["ci_low"] is one["ci_high"] is None and "one image in a class" in one["note"]
    for ci in (perfect, ddp):
        assert ci["value"] == 1.0 and ci["ci_low"] is None and ci["ci_high"] is None
        assert "separate the classes perfectly" in ci["note"]


def test_paired_bootstrap_difference_is_stratified_and_reproducible(monkeypatch):
    rng = np.random.default_rng(3)
    labels = np.r_[np.ones(8), np.zeros(52)].astype(int)
    good, weak = labels * 2.0 + rng.normal(size=60), labels * 0.3 + rng.normal(size=60)
    first = compare.bootstrap_auc_difference(good, weak, labels, 0.95, seed=7, n_resamples=500)
    assert first == compare.bootstrap_auc_difference(good, weak, labels, 0.95, seed=7, n_resamples=500)
    assert first["value"] == pytest.approx(roc_auc_score(labels, good) - roc_auc_score(labels, weak))
    assert first["ci_low"] < first["value"] < first["ci_high"]
    # stratified: every resample the AUCs are computed on holds exactly the 8 positives' and the
    # 52 negatives' places, each drawn from its own class (an unstratified bootstrap draws 60
    # images from all of them, so class sizes vary and classes mix)
    seen = []
    real = compare._mann_whitney_auc

    def spy(positives, negatives):
        seen.append((np.asarray(positives), np.asarray(negatives)))
        return real(positives, negatives)

    monkeypatch.setattr(compare, "_mann_whitney_auc", spy)
    compare.bootstrap_auc_difference(good, weak, labels, 0.95, seed=7, n_resamples=300)
    resampled = [(p, n) for p, n in seen if p.ndim == 2]
    assert sum(len(p) for p, _ in resampled) >= 2 * 300  # both models, every resample
    allowed_pos = set(good[labels == 1]) | set(weak[labels == 1])
    allowed_neg = set(good[labels == 0]) | set(weak[labels == 0])
    for positives, negatives in resampled:
        assert positives.shape[-1] == 8 and negatives.shape[-1] == 52
        assert set(positives.ravel()) <= allowed_pos and set(negatives.ravel()) <= allowed_neg
    assert any(len(set(row)) < 8 for p, _ in resampled for row in p)  # drawn with replacement


def test_a_difference_that_never_varies_has_no_interval():
    labels = np.r_[np.ones(10), np.zeros(10)].astype(int)
    s = labels + np.random.default_rng(0).normal(size=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = compare.bootstrap_auc_difference(s, s, labels, 0.95, seed=7, n_resamples=200)
    assert same["value"] == 0 and same["ci_low"] is None and same["ci_high"] is None and "does not vary" in same["note"]


def test_mcnemar_exact_and_honest_wording():
    a = np.array([1] * 10 + [0] * 2 + [1] * 8, bool)
    b = np.array([1] * 10 + [1] * 2 + [0] * 8, bool)
    result = compare.mcnemar_exact(a, b)
    assert (result["only_first_correct"], result["only_second_correct"]) == (8, 2)
    assert result["statistic"] == 2 and result["p"] == pytest.approx(0.109375)  # 2 * P(Bin(10, .5) <= 2)
    text = compare.interpretation("resnet34", "resnet50", result["p"], 0.05, "accuracy")
    assert "no evidence of a difference" in text and "equivalent" in text and "not" in text
    assert "evidence that resnet34 and resnet50 differ" in compare.interpretation("resnet34", "resnet50", 0.01, 0.05, "x")


def test_a_bootstrap_with_one_image_in_a_class_is_na_not_a_crash():
    labels = np.array([1, 0, 0, 0, 0])
    a, b = np.array([0.9, 0.1, 0.2, 0.3, 0.4]), np.array([0.5, 0.1, 0.6, 0.3, 0.4])
    d = compare.bootstrap_auc_difference(a, b, labels, 0.95, seed=0, n_resamples=100)
    assert d["ci_low"] is None and "fewer than 2 images in a class" in d["note"]
    d = compare.bootstrap_auc_difference(np.repeat(a, 3), np.repeat(b, 3), np.repeat(labels, 3), 0.95, seed=0,
                                         n_resamples=100, clusters=np.repeat(np.arange(5), 3))
    assert d["ci_low"] is None and "fewer than 2 patients in a class" in d["note"]
