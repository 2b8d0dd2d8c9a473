"""Calibration: Brier score, recalibration intercept and slope, reliability diagram."""

import numpy as np
import pytest
from scipy.special import expit

from gistnet.evidence import calibration


def _draw(n, true_slope, seed=0):
    """Labels drawn from P = expit(score / true_slope): a model whose scores are too large
    (over-confident) by the factor true_slope has calibration slope 1 / true_slope."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(scale=2.0, size=n)
    labels = rng.random(n) < expit(scores / true_slope)
    return labels, expit(scores), scores


def test_well_calibrated_scores_have_slope_one_and_intercept_zero():
    labels, p, s = _draw(4000, 1.0)
    c = calibration.calibration(labels, p, s)
    assert c["slope"] == pytest.approx(1.0, abs=0.1) and c["intercept"] == pytest.approx(0.0, abs=0.1)
    assert c["brier"] == pytest.approx(np.mean((p - labels) ** 2))
    assert all(abs(b["predicted"] - b["observed"]) < 0.06 for b in c["bins"])


def test_over_confident_scores_have_slope_below_one():
    labels, p, s = _draw(4000, 2.0)
    assert calibration.calibration(labels, p, s)["slope"] == pytest.approx(0.5, abs=0.07)


def test_separated_and_single_class_inputs_give_null_slope_with_a_note(tmp_path):
    labels = np.array([1, 1, 1, 0, 0, 0])
    s = np.array([4.0, 3.0, 2.0, -2.0, -3.0, -4.0])
    c = calibration.calibration(labels, expit(s), s)
    assert c["slope"] is None and "separate" in c["note"] and c["intercept"] is not None
    one = calibration.calibration([1, 1], [0.9, 0.8], [2.2, 1.4])
    assert one["slope"] is None and one["intercept"] is None and "one class" in one["note"]
    calibration.reliability_diagram({"resnet34": c, "resnet50": one}, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_the_intercept_is_calibration_in_the_large_not_the_joint_fits():
    """Scores whose true recalibration is logit P = -1 + 0.5 * score: the joint fit's intercept is
    about -1, calibration-in-the-large (slope fixed at 1) is the root of sum(y - expit(a + s)) = 0,
    found here with SciPy's brentq; the slope matches scikit-learn's unpenalised fit."""
    from scipy.optimize import brentq
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(4)
    s = rng.normal(loc=2.0, scale=2.0, size=3000)
    labels = rng.random(3000) < expit(-1.0 + 0.5 * s)
    c = calibration.calibration(labels, expit(s), s)
    citl = brentq(lambda a: np.sum(labels - expit(a + s)), -10, 10, xtol=1e-12)
    joint = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(s[:, None], labels)
    assert c["intercept"] == pytest.approx(citl, abs=1e-6)
    assert abs(c["intercept"] - joint.intercept_[0]) > 0.3  # the two intercepts are not the same number
    assert c["slope"] == pytest.approx(joint.coef_[0, 0], abs=1e-5)
    assert c["intercept_definition"].startswith("calibration-in-the-large") and "slope fixed at 1" in \
        c["intercept_definition"]
    assert "J Clin Epidemiol 2016;74:167-176" in c["citation"] and "BMC Med 2019;17:230" in c["citation"]


def test_quasi_separated_scores_have_no_slope_and_say_why():
    """A threshold splits the classes with a tie at it: the slope's MLE does not exist (the old
    code reported a slope of about 12)."""
    labels = np.array([1, 1, 1, 0, 0, 0])
    s = np.array([2.0, 1.0, 0.0, 0.0, -1.0, -2.0])
    c = calibration.calibration(labels, expit(s), s)
    assert c["slope"] is None and "does not exist" in c["note"] and c["intercept"] is not None
