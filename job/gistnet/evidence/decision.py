"""Decision curve analysis (Vickers & Elkin 2006): net benefit of acting on the model's
probability, against treating everyone and treating no one, over threshold probabilities.

At threshold probability pt an image's case is treated (here: called GIST, e.g. sent to
resection) when P(GIST) >= pt. Net benefit counts images, not patients: with n images, TP true
and FP false positives at that threshold:

    net benefit = TP / n - FP / n * pt / (1 - pt)
    treat all   = prevalence - (1 - prevalence) * pt / (1 - pt)
    treat none  = 0

The formula is three lines of numpy; ``tests/evidence/test_decision.py`` checks every value
against the ``dcurves`` package (PyPI), which is installed for the tests only.
"""

from __future__ import annotations

import numpy as np

LOW, HIGH, STEP = 0.05, 0.95, 0.01
HOW_TO_READ = ("At each threshold probability (how sure you want to be of GIST before acting), the model is "
               "worth using where its net benefit curve lies above both 'treat all' and 'treat none' (0); net "
               "benefit is true positives per image minus false positives per image weighted by the odds of the threshold "
               "(n counts images, not patients).")


def thresholds(low: float = LOW, high: float = HIGH, step: float = STEP) -> np.ndarray:
    """0.05, 0.06, ..., 0.95 (rounded, so they print and compare exactly)."""
    return np.round(np.arange(low, high + step / 2, step), 10)


def net_benefit(labels, probabilities, pts) -> np.ndarray:
    """Net benefit of treating when ``probabilities >= pt``, for each pt in ``pts``."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    pts = np.asarray(pts, dtype=np.float64)
    n = len(y)
    if n == 0:
        raise ValueError("net benefit of no images")
    treated = p[None, :] >= pts[:, None]
    tp = (treated & y[None, :]).sum(axis=1)
    fp = (treated & ~y[None, :]).sum(axis=1)
    return tp / n - fp / n * pts / (1 - pts)


def treat_all(labels, pts) -> np.ndarray:
    y = np.asarray(labels).astype(bool)
    prevalence = y.mean()
    pts = np.asarray(pts, dtype=np.float64)
    return prevalence - (1 - prevalence) * pts / (1 - pts)


def decision_curves(labels, probabilities_by_model: dict[str, object]) -> dict:
    """The report's ``decision_curve`` section: thresholds, net benefit per model, treat-all,
    treat-none, and for each model the thresholds where it beats both."""
    pts = thresholds()
    y = np.asarray(labels).astype(int)
    everyone = treat_all(y, pts)
    models, useful = {}, {}
    for name, probabilities in probabilities_by_model.items():
        nb = net_benefit(y, probabilities, pts)
        models[name] = [round(float(v), 6) for v in nb]
        better = pts[(nb > everyone + 1e-12) & (nb > 1e-12)]
        useful[name] = [float(v) for v in better]
    return {
        "method": "net benefit (Vickers & Elkin 2006): TP/n - FP/n * pt/(1-pt), treating when P >= pt",
        "n": int(len(y)), "prevalence": float(y.mean()) if len(y) else None,
        "thresholds": [float(v) for v in pts],
        "net_benefit": models,
        "treat_all": [round(float(v), 6) for v in everyone],
        "treat_none": [0.0] * len(pts),
        "model_above_both": {name: _ranges(values) for name, values in useful.items()},
        "how_to_read": HOW_TO_READ,
    }


def _ranges(values: list[float], step: float = STEP) -> list[list[float]]:
    """[0.05, 0.06, 0.07, 0.3] -> [[0.05, 0.07], [0.3, 0.3]]: the runs of consecutive thresholds."""
    out: list[list[float]] = []
    for v in values:
        if out and abs(v - out[-1][1] - step) < step / 2:
            out[-1][1] = v
        else:
            out.append([v, v])
    return out


def figure(section: dict, path: str, title: str = "Decision curve") -> None:
    """Net benefit of each model, treat-all and treat-none, against the threshold probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = section["thresholds"]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, nb in section["net_benefit"].items():
        ax.plot(pts, nb, label=name)
    ax.plot(pts, section["treat_all"], color="0.5", linestyle="--", label="treat all")
    ax.plot(pts, section["treat_none"], color="k", linewidth=0.8, label="treat none")
    prevalence = section["prevalence"] or 0.0
    ax.set_ylim(min(-0.05, -0.1 * max(prevalence, 0.05)), max(prevalence, 0.05) * 1.1)
    ax.set_xlim(pts[0], pts[-1])
    ax.set_xlabel("threshold probability")
    ax.set_ylabel("net benefit")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
