"""Calibration: do the predicted probabilities match how often GIST is actually found?

Brier score (scikit-learn), calibration intercept and slope by logistic recalibration
(statsmodels; Van Calster et al. 2019, J Clin Epidemiol 2016;74:167): the slope is the
coefficient of the logit score in ``logit P(GIST) = a + b * score`` (1 is ideal; below 1
the model is over-confident), the intercept ("calibration-in-the-large") is ``a`` in
``logit P(GIST) = a + score`` (0 is ideal; above 0 the model under-predicts GIST).
The reliability diagram bins the probabilities (scikit-learn ``calibration_curve``).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from gistnet import plots

METHOD = "logistic recalibration on the logit score (statsmodels)"


def _separated(scores: np.ndarray, labels: np.ndarray) -> bool:
    """True when a threshold splits the classes perfectly: the logistic fit has no finite slope."""
    return bool(labels.any() and (~labels).any() and
                (scores[labels].min() > scores[~labels].max() or scores[labels].max() < scores[~labels].min()))


def _recalibration(scores: np.ndarray, labels: np.ndarray) -> tuple[float | None, float | None]:
    import statsmodels.api as sm

    y = labels.astype(float)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            intercept = sm.GLM(y, np.ones_like(scores), family=sm.families.Binomial(), offset=scores).fit().params[0]
            slope = None
            if not _separated(scores, labels):
                slope = sm.Logit(y, sm.add_constant(scores, has_constant="add")).fit(disp=0).params[1]
    except (np.linalg.LinAlgError, ValueError):
        return None, None
    finite = (lambda v: float(v) if v is not None and np.isfinite(v) else None)
    return finite(intercept), finite(slope)


def calibration(labels, probabilities, scores, n_bins: int = 10) -> dict:
    """Brier score, calibration intercept and slope, and the reliability-diagram bins."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    result = {"brier": float(brier_score_loss(y.astype(int), p, pos_label=1)), "intercept": None, "slope": None,
              "method": METHOD, "bins": [], "note": ""}
    if y.all() or not y.any():
        result["note"] = "one class only: intercept and slope are not defined"
        return result
    result["intercept"], result["slope"] = _recalibration(s, y)
    if _separated(s, y):
        result["note"] = "the scores separate the classes perfectly: the slope is not defined"
    bins = max(2, min(n_bins, len(y) // 10))
    observed, predicted = calibration_curve(y.astype(int), p, n_bins=bins, strategy="quantile")
    result["bins"] = [{"predicted": float(a), "observed": float(b)} for a, b in zip(predicted, observed)]
    return result


def reliability_diagram(calibrations: dict[str, dict], path) -> None:
    """Observed share of GIST against mean predicted probability, per model, on one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for name, c in calibrations.items():
        if c["bins"]:
            ax.plot([b["predicted"] for b in c["bins"]], [b["observed"] for b in c["bins"]], "o-",
                    label=f"{name} (Brier {c['brier']:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    plots.save_plot(fig, ax, path, "reliability diagram", "predicted probability of GIST (bin mean)",
                     "observed share of GIST", "upper left")
