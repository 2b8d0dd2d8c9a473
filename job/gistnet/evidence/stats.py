"""Diagnostic accuracy statistics with confidence intervals.

Binomial intervals come from statsmodels' ``proportion_confint``. ``wald`` is the plain
normal approximation clipped to [0, 1]: it is what the paper's table actually used
(its text says "adjusted Wald"), and is poor at n < 30, so the default is ``wilson``.
"""

from __future__ import annotations

from statsmodels.stats.proportion import proportion_confint

_STATSMODELS_METHOD = {"wald": "normal", "wilson": "wilson", "agresti-coull": "agresti_coull",
                       "clopper-pearson": "beta"}
METRICS = ("sensitivity", "specificity", "ppv", "npv", "accuracy")


def proportion(numerator: int, denominator: int, method: str = "wilson", level: float = 0.95) -> dict:
    """A proportion with its interval; value and bounds are None when the denominator is 0."""
    if denominator == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "numerator": numerator, "denominator": 0}
    low, high = proportion_confint(numerator, denominator, alpha=1 - level, method=_STATSMODELS_METHOD[method])
    return {"value": numerator / denominator, "ci_low": float(min(max(low, 0.0), 1.0)),
            "ci_high": float(min(max(high, 0.0), 1.0)), "numerator": numerator, "denominator": denominator}


def diagnostic_table(tp: int, fp: int, tn: int, fn: int, method: str = "wilson", level: float = 0.95) -> dict:
    """Sensitivity, specificity, PPV, NPV and accuracy, GIST being the positive class."""
    parts = {"sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp), "ppv": (tp, tp + fp),
             "npv": (tn, tn + fn), "accuracy": (tp + tn, tp + fp + tn + fn)}
    return {name: proportion(num, den, method, level) for name, (num, den) in parts.items()}


def format_table(metrics: dict) -> str:
    """The metrics as the paper prints them: 85.71% (12/14) (95% CI 67.38-100.00%)."""
    lines = []
    for name in METRICS:
        m = metrics[name]
        if m["value"] is None:
            lines.append(f"{name:12s} n/a (0 cases)")
            continue
        lines.append(f"{name:12s} {m['value'] * 100:6.2f}% ({m['numerator']}/{m['denominator']}) "
                     f"CI {m['ci_low'] * 100:.2f}-{m['ci_high'] * 100:.2f}%")
    return "\n".join(lines)
