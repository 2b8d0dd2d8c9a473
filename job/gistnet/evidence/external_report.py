"""The external evaluation's own pieces of evidence: the frozen-threshold tables, the side-by-side
"development vs external" table, and report.md for it."""

from __future__ import annotations

import numpy as np

from gistnet.evidence import evaluate
from gistnet.evidence import report as report_mod
from gistnet.evidence import sections
from gistnet.evidence import stats

SIDE_BY_SIDE = ("roc_auc", "sensitivity", "specificity", "ppv", "npv", "accuracy")


def at_threshold(labels, probabilities, threshold: float, ci_method: str, level: float, how: str,
                 clusters=None) -> dict:
    """The confusion matrix and the five metrics at a frozen ``threshold``; intervals clustered by
    patient as the rest of the report's are (``clusters``)."""
    cm = evaluate.confusion(labels, probabilities, threshold)
    called = np.asarray(probabilities) >= threshold
    return {"value": threshold, "frozen": True, "chosen_on": how, "confusion_matrix": cm,
            "metrics": stats.diagnostic_metrics(labels, called, ci_method, level, clusters)}


def _metric(section: dict, name: str) -> dict:
    m = section["roc_auc"] if name == "roc_auc" else section["metrics"][name]
    return {"value": m["value"], "ci_low": m["ci_low"], "ci_high": m["ci_high"],
            **({"note": m["note"]} if m.get("note") else {})}  # why an interval is n/a travels with it


def side_by_side(development: dict, external: dict, pooled: bool) -> dict:
    """Per metric: development (validation, or pooled out-of-fold) and external, with both intervals
    (both at the pre-specified 0.5 threshold)."""
    rows = []
    for name in SIDE_BY_SIDE:
        dev, ext = _metric(development, name), _metric(external, name)
        diff = None if dev["value"] is None or ext["value"] is None else ext["value"] - dev["value"]
        rows.append({"metric": name, "development": dev, "external": ext, "difference": diff})
    return {"development_is": "pooled out-of-fold" if pooled else "validation set", "threshold": 0.5, "rows": rows}


def _ci(m: dict, pct: bool) -> str:
    return stats.value_with_interval(m, pct)


def markdown(report: dict) -> str:
    ext = report["external"]
    positive = next(n for n, r in report["dataset"]["classes"].items() if r == "positive")
    w = report_mod.words(report)
    lines = [f"# {w['title']}", "", w["design"], "", w["caveat"], "",
             f"Created {report['created']} by gistnet {report['gistnet_version']} on {report['environment']['device']}.",
             f"Data: `{report['dataset']['uri']}`: {ext['counts']['scored']} images scored, "
             f"{ext['counts']['evaluated']} evaluated, {ext['counts']['unusable']} unusable.",
             f"Overlap with the development data ({ext['overlap']['method']}): {ext['overlap']['status']}.", "",
             "Thresholds are frozen: 0.5 (pre-specified) and each model's development Youden threshold; none is "
             "re-chosen on these images. " + ("Intervals and tests are clustered by patient."
                                             if ext.get("clustered") else "Intervals treat images as independent."),
             ""]
    for name, m in report["models"].items():
        sbs = m["side_by_side"]
        lines += [f"## {name}", "", f"{m['scoring']}.", "",
                  f"| metric | development ({sbs['development_is']}) | external | difference |",
                  "| --- | --- | --- | --- |"]
        for row in sbs["rows"]:
            pct = row["metric"] != "roc_auc"
            diff = "n/a" if row["difference"] is None else f"{row['difference']:+.3f}"
            lines.append(f"| {row['metric']} | {_ci(row['development'], pct)} | {_ci(row['external'], pct)} | {diff} |")
        cal = m["calibration"]
        lines += ["", f"Calibration on the external images: calibration-in-the-large {_num(cal.get('intercept'))} "
                      "(the logistic intercept with the slope fixed at 1, on the logit margins; above 0: "
                      f"under-predicts), calibration slope {_num(cal.get('slope'))} (joint logistic fit); 0 and 1 when "
                      "calibrated; a new site usually moves them."]
        for key in ("primary", "youden"):
            t = m["thresholds"][key]
            mm = t["metrics"]
            lines.append(f"- threshold {t['value']:.3f} ({t['chosen_on']}): sensitivity {_ci(mm['sensitivity'], True)}, "
                         f"specificity {_ci(mm['specificity'], True)}")
        lines.append("")
    comparison = report.get("comparison")
    if comparison:
        lines += ["## Comparison of the models on the external images", ""] + [f"- {s}" for s in
                                                                             comparison["interpretation"]] + [""]
    lines += [sections.markdown(report)]
    lines.append(f"Sensitivity: {positive} cases called {positive}. Intervals with a zero denominator are n/a.")
    return "\n".join(lines) + "\n"


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def labels_array(labels) -> np.ndarray:
    return np.asarray(labels).astype(int)
