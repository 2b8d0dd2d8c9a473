"""Diagnostic accuracy statistics with confidence intervals.

Binomial intervals come from statsmodels' ``proportion_confint``. ``wald`` is the plain
normal approximation clipped to [0, 1]: it is what the paper's table actually used
(its text says "adjusted Wald"), and is poor at n < 30, so the default is ``wilson``.

With ``clusters`` (patient ids aligned with the images) and any patient having more than
one image, the intervals are clustered by patient (``gistnet.evidence.clustered``). An
interval of zero width (a Wald interval at 0% or 100%) is not a 95% interval: its bounds
are null and ``note`` says why.
"""

from __future__ import annotations

import numpy as np
from statsmodels.stats.proportion import proportion_confint

from gistnet.evidence import clustered

_STATSMODELS_METHOD = {"wald": "normal", "wilson": "wilson", "agresti-coull": "agresti_coull",
                       "clopper-pearson": "beta"}
METRICS = ("sensitivity", "specificity", "ppv", "npv", "accuracy")


def _degenerate(result: dict, method: str) -> dict:
    """Null the bounds of a zero-width interval and say why."""
    if result["value"] is not None and result["ci_low"] is not None and result["ci_high"] - result["ci_low"] <= 0:
        return {**result, "ci_low": None, "ci_high": None,
                "note": f"the {method} interval has zero width at {result['value']:.0%}: no interval"}
    return result


def proportion(numerator: int, denominator: int, method: str = "wilson", level: float = 0.95) -> dict:
    """A proportion with its interval; value and bounds are None when the denominator is 0."""
    if denominator == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "numerator": numerator, "denominator": 0}
    low, high = proportion_confint(numerator, denominator, alpha=1 - level, method=_STATSMODELS_METHOD[method])
    return _degenerate({"value": numerator / denominator, "ci_low": float(min(max(low, 0.0), 1.0)),
                        "ci_high": float(min(max(high, 0.0), 1.0)), "numerator": numerator,
                        "denominator": denominator}, method)


def diagnostic_table(tp: int, fp: int, tn: int, fn: int, method: str = "wilson", level: float = 0.95) -> dict:
    """Sensitivity, specificity, PPV, NPV and accuracy, GIST being the positive class."""
    parts = {"sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp), "ppv": (tp, tp + fp),
             "npv": (tn, tn + fn), "accuracy": (tp + tn, tp + fp + tn + fn)}
    return {name: proportion(num, den, method, level) for name, (num, den) in parts.items()}


def diagnostic_metrics(labels, called, method: str = "wilson", level: float = 0.95, clusters=None) -> dict:
    """The five metrics from per-image truth (1 positive) and calls (1 called positive); with
    ``clusters`` and a patient with several images, each interval is clustered by patient."""
    y, c = np.asarray(labels).astype(bool), np.asarray(called).astype(bool)
    groups = clustered.codes(clusters, len(y))
    if groups is None:
        tp, fp = int((y & c).sum()), int((~y & c).sum())
        tn, fn = int((~y & ~c).sum()), int((y & ~c).sum())
        return diagnostic_table(tp, fp, tn, fn, method, level)
    parts = {"sensitivity": (y, c), "specificity": (~y, ~c), "ppv": (c, y), "npv": (~c, ~y),
             "accuracy": (np.ones_like(y), y == c)}
    out = {}
    for name, (among, right) in parts.items():
        result = clustered.proportion(right[among], groups[among], _STATSMODELS_METHOD[method], level)
        out[name] = _degenerate(result, method) if result["value"] is not None else result
    return out


def interval_text(low, high, fmt: str = ".3f", note: str | None = None) -> str:
    """An interval in words: "-0.075 to 0.011" (never "-0.075-0.011", which reads as one bound)."""
    if low is None or high is None:
        return f"n/a ({note})" if note else "n/a"
    return f"{format(low, fmt)} to {format(high, fmt)}"


def value_with_interval(m: dict, percent: bool) -> str:
    """A table cell: "85.7% (67.4 to 100.0)" or "0.912 (0.801 to 0.987)"; "n/a" without a value,
    and "interval n/a (reason)" when the interval is not estimable."""
    if m.get("value") is None:
        return "n/a"
    scale, fmt, unit = (100, ".1f", "%") if percent else (1, ".3f", "")
    low, high = m.get("ci_low"), m.get("ci_high")
    interval = interval_text(None if low is None else low * scale, None if high is None else high * scale, fmt,
                             m.get("note") or "not estimable")
    return f"{format(m['value'] * scale, fmt)}{unit} ({'interval ' if low is None else ''}{interval})"


def format_table(metrics: dict) -> str:
    """The metrics as the paper prints them: 85.71% (12/14) (95% CI 67.38-100.00%)."""
    lines = []
    for name in METRICS:
        m = metrics[name]
        if m["value"] is None:
            lines.append(f"{name:12s} n/a (0 cases)")
            continue
        ci = (f"CI n/a ({m.get('note', 'no interval')})" if m["ci_low"] is None
              else f"CI {m['ci_low'] * 100:.2f}-{m['ci_high'] * 100:.2f}%")
        lines.append(f"{name:12s} {m['value'] * 100:6.2f}% ({m['numerator']}/{m['denominator']}) {ci}")
    return "\n".join(lines)
