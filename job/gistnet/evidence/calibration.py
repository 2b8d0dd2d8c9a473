"""Calibration: do the predicted probabilities match how often GIST is actually found?

Brier score (scikit-learn) and two logistic-recalibration numbers (statsmodels), after Van
Calster B, Nieboer D, Vergouwe Y, De Cock B, Pencina MJ, Steyerberg EW, "A calibration
hierarchy for risk models was defined: from utopia to empirical data", J Clin Epidemiol
2016;74:167-176, and Van Calster B, McLernon DJ, van Smeden M, Wynants L, Steyerberg EW,
"Calibration: the Achilles heel of predictive analytics", BMC Med 2019;17:230:

- the intercept is calibration-in-the-large: ``a`` in ``logit P(GIST) = a + score``, the slope
  fixed at 1 (the score an offset); 0 is ideal, above 0 the model under-predicts GIST. It is
  not the intercept of the joint fit below.
- the slope is ``b`` in the joint fit ``logit P(GIST) = a + b * score``; 1 is ideal, below 1
  the model is over-confident. When a threshold splits the classes, ties at it allowed
  (complete or quasi-complete separation), its maximum-likelihood estimate does not exist:
  the slope is then null with the reason.

The reliability diagram bins the probabilities (scikit-learn ``calibration_curve``).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from gistnet import plots

METHOD = "logistic recalibration on the logit score (statsmodels)"
INTERCEPT = "calibration-in-the-large: a in logit P = a + score (slope fixed at 1)"
SLOPE = "calibration slope: b in the joint fit logit P = a + b * score"
CITATION = ("Van Calster et al., J Clin Epidemiol 2016;74:167-176 (calibration hierarchy); "
            "Van Calster et al., BMC Med 2019;17:230")


def _separated(scores: np.ndarray, labels: np.ndarray) -> bool:
    """True when a threshold splits the classes, ties at the threshold allowed (complete or
    quasi-complete separation): the logistic fit of one score then has no finite slope."""
    return bool(labels.any() and (~labels).any() and
                (scores[labels].min() >= scores[~labels].max() or scores[labels].max() <= scores[~labels].min()))


def _recalibration(scores: np.ndarray, labels: np.ndarray) -> tuple[float | None, float | None]:
    import statsmodels.api as sm

    y = labels.astype(float)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            intercept = sm.GLM(y, np.ones_like(scores), family=sm.families.Binomial(), offset=scores).fit().params[0]
            slope = None
            if not _separated(scores, labels):
                fit = sm.Logit(y, sm.add_constant(scores, has_constant="add")).fit(disp=0)
                slope = fit.params[1] if fit.mle_retvals.get("converged", True) else None
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
              "method": METHOD, "intercept_definition": INTERCEPT, "slope_definition": SLOPE, "citation": CITATION,
              "bins": [], "note": ""}
    if y.all() or not y.any():
        result["note"] = "one class only: intercept and slope are not defined"
        return result
    result["intercept"], result["slope"] = _recalibration(s, y)
    if _separated(s, y):
        result["note"] = ("a threshold on the scores separates the classes (ties at it allowed): the slope's "
                          "maximum-likelihood estimate does not exist, so the slope is n/a")
    elif result["slope"] is None:
        result["note"] = "the logistic fit for the slope did not converge: the slope is n/a"
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
