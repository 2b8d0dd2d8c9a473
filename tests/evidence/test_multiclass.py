"""K-class evidence against scikit-learn and hand computations; the endpoint against its definition."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import (balanced_accuracy_score, cohen_kappa_score, confusion_matrix, roc_auc_score)

from gistnet.evidence import multiclass

CLASSES = ("GIST", "LM", "schwannoma", "NET", "ectopic_pancreas")


def data(n=150, k=5, seed=0, signal=1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += signal
    return y, logits


def test_endpoint_is_the_softmax_mass_of_the_positive_class_and_its_log_odds():
    y, logits = data()
    p, margin = multiclass.endpoint(logits, positive=0)
    e = np.exp(logits)
    expected = e[:, 0] / e.sum(axis=1)
    np.testing.assert_allclose(p, expected, rtol=1e-12)
    np.testing.assert_allclose(margin, np.log(expected / (1 - expected)), rtol=1e-9, atol=1e-9)
    # Saturated: P rounds to 1.0 but the margins still rank the images.
    big = np.array([[800.0, 0, 0], [900.0, 0, 0]])
    p_sat, m_sat = multiclass.endpoint(big, 0)
    assert p_sat[0] == p_sat[1] == 1.0 and m_sat[1] > m_sat[0]


def test_two_classes_reduce_to_todays_binary_score():
    y, logits = data(k=2)
    p, margin = multiclass.endpoint(logits, 0)
    np.testing.assert_allclose(margin, logits[:, 0] - logits[:, 1], atol=1e-12)


def test_summary_matches_scikit_learn():
    y, logits = data()
    s = multiclass.summary(y, logits, CLASSES)
    predicted = logits.argmax(axis=1)
    np.testing.assert_array_equal(s["confusion"], confusion_matrix(y, predicted, labels=range(5)))
    rows = np.asarray(s["confusion"]).sum(axis=1)
    np.testing.assert_allclose(np.asarray(s["confusion_normalised"]).sum(axis=1), np.ones(5)[rows > 0])
    probs = multiclass.probabilities(logits)
    for c, name in enumerate(CLASSES):
        assert s["auc_ovr"][name]["value"] == pytest.approx(roc_auc_score(y == c, probs[:, c]))
        sens = s["per_class"][name]["sensitivity"]["value"]
        assert sens == pytest.approx(((predicted == c) & (y == c)).sum() / (y == c).sum())
    assert s["macro_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert s["accuracy"]["value"] == pytest.approx((predicted == y).mean())
    assert s["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y, predicted))
    assert s["kappa"]["value"] == pytest.approx(cohen_kappa_score(y, predicted))
    assert "unweighted" in s["kappa"]["definition"]
    onehot = np.eye(5)[y]
    assert s["brier"] == pytest.approx(np.mean(np.sum((probs - onehot) ** 2, axis=1)))
    for key in ("balanced_accuracy", "kappa"):
        assert s[key]["ci_low"] < s[key]["value"] < s[key]["ci_high"]


def test_intervals_are_clustered_by_patient():
    y, logits = data(n=60)
    once = multiclass.summary(y, logits, CLASSES, clusters=[f"p{i}" for i in range(60)])
    thrice = multiclass.summary(np.repeat(y, 3), np.repeat(logits, 3, axis=0), CLASSES,
                                clusters=[f"p{i}" for i in np.repeat(np.arange(60), 3)])
    naive = multiclass.summary(np.repeat(y, 3), np.repeat(logits, 3, axis=0), CLASSES)

    def width(m):
        return m["ci_high"] - m["ci_low"]

    for key in ("accuracy", "balanced_accuracy", "kappa"):
        assert width(thrice[key]) == pytest.approx(width(once[key]), rel=0.25)
        assert width(naive[key]) < 0.8 * width(thrice[key])
    auc_once, auc_thrice = once["auc_ovr"]["GIST"], thrice["auc_ovr"]["GIST"]
    assert width(auc_thrice) == pytest.approx(width(auc_once), rel=0.1)


def test_accuracy_comparison_is_mcnemar_on_correct_calls():
    y, a = data(seed=1)
    _, b = data(seed=2)
    result = multiclass.accuracy_comparison(y, a, b)
    right_a, right_b = a.argmax(1) == y, b.argmax(1) == y
    assert result["only_first_correct"] == int((right_a & ~right_b).sum())
    assert result["only_second_correct"] == int((~right_a & right_b).sum())


def test_the_bootstraps_fast_statistics_equal_scikit_learns():
    for seed in range(5):
        y, logits = data(n=40, seed=seed, signal=0.5)
        predicted = logits.argmax(axis=1)
        keep = y != 4  # a class absent from the truth but predicted: scikit-learn's edge case
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn warns about that class, and so it should
            expected = balanced_accuracy_score(y[keep], predicted[keep])
        assert multiclass.fast_balanced_accuracy(y[keep], predicted[keep], 5) == pytest.approx(expected)
        assert multiclass.fast_kappa(y, predicted, 5) == pytest.approx(cohen_kappa_score(y, predicted))
