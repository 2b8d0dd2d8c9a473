"""DeLong (fast, Sun & Xu) against the O(n^2) placement-value definition; bootstrap and McNemar."""

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
    assert compare.delong_test(perfect, perfect * 2, labels) == {"z": None, "p": None}


def test_paired_bootstrap_difference_is_stratified_and_reproducible():
    rng = np.random.default_rng(3)
    labels = np.r_[np.ones(30), np.zeros(30)].astype(int)
    good, weak = labels * 2.0 + rng.normal(size=60), labels * 0.3 + rng.normal(size=60)
    first = compare.bootstrap_auc_difference(good, weak, labels, 0.95, seed=7, n_resamples=500)
    assert first == compare.bootstrap_auc_difference(good, weak, labels, 0.95, seed=7, n_resamples=500)
    assert first["value"] == pytest.approx(roc_auc_score(labels, good) - roc_auc_score(labels, weak))
    assert 0 < first["ci_low"] < first["value"] < first["ci_high"]
    same = compare.bootstrap_auc_difference(good, good, labels, 0.95, seed=7, n_resamples=200)
    assert same["value"] == same["ci_low"] == same["ci_high"] == 0


def test_mcnemar_exact_and_honest_wording():
    a = np.array([1] * 10 + [0] * 2 + [1] * 8, bool)
    b = np.array([1] * 10 + [1] * 2 + [0] * 8, bool)
    result = compare.mcnemar_exact(a, b)
    assert (result["only_first_correct"], result["only_second_correct"]) == (8, 2)
    assert result["statistic"] == 2 and result["p"] == pytest.approx(0.109375)  # 2 * P(Bin(10, .5) <= 2)
    text = compare.interpretation("resnet34", "resnet50", result["p"], 0.05, "accuracy")
    assert "no evidence of a difference" in text and "equivalent" in text and "not" in text
    assert "evidence that resnet34 and resnet50 differ" in compare.interpretation("resnet34", "resnet50", 0.01, 0.05, "x")
