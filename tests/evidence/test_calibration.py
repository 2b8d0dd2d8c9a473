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
