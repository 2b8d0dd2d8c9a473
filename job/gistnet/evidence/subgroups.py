"""Subgroup performance: for each value of a manifest column (``evaluate.subgroups``), n,
sensitivity, specificity and ROC AUC with their intervals, at the evaluation's threshold.

A subgroup with fewer than ``evaluate.min_subgroup`` images is listed with its n and n/a
metrics (never dropped); images with no value in the column form a "(missing)" row, also
n/a. A column the data does not have is a configuration error naming it.

With patient ids (``clusters``) where a patient has several images, every interval is clustered
by patient as the rest of the report's are (``evaluate.diagnostic_report``: Rao-Scott
proportions, Obuchowski AUC), and each row and the section state the unit of analysis.
"""

from __future__ import annotations

import numpy as np

from gistnet.errors import ConfigError
from gistnet.evidence import clustered, evaluate, stats

MISSING = "(missing)"


def check_columns(columns, available, where: str) -> None:
    """ConfigError naming every ``evaluate.subgroups`` column that ``where`` does not have."""
    unknown = [c for c in columns if c not in set(available)]
    if unknown:
        have = ", ".join(sorted(available)) or "none: no manifest.csv with a header row"
        raise ConfigError(f"evaluate.subgroups: column(s) {', '.join(repr(c) for c in unknown)} not in {where} "
                          f"(its covariate columns: {have})")


def _na(value: str, n: int, positives: int, reason: str) -> dict:
    none = {"value": None, "ci_low": None, "ci_high": None}
    return {"value": value, "n": n, "positives": positives, "negatives": n - positives, "status": reason,
            "sensitivity": dict(none), "specificity": dict(none), "roc_auc": dict(none)}


def subgroup_rows(values, labels, probabilities, scores, threshold: float, ci_method: str, level: float,
                  min_n: int, clusters=None) -> list[dict]:
    """One row per value of one column (sorted; "(missing)" last); ``clusters``: patient ids
    aligned with the images (None: independent images)."""
    values = [(v or "").strip() or MISSING for v in values]
    ids = None if clusters is None else np.asarray([str(c or "") for c in clusters], dtype=object)
    y = np.asarray(labels).astype(int)
    p, s = np.asarray(probabilities, np.float64), np.asarray(scores, np.float64)
    rows = []
    for value in sorted(set(values), key=lambda v: (v == MISSING, v)):
        idx = np.array([i for i, v in enumerate(values) if v == value])
        positives = int(y[idx].sum())
        if value == MISSING:
            rows.append(_na(value, len(idx), positives, "n/a: no value recorded"))
            continue
        if len(idx) < min_n:
            rows.append(_na(value, len(idx), positives, f"n/a: fewer than evaluate.min_subgroup={min_n} images"))
            continue
        diag = evaluate.diagnostic_report(y[idx], p[idx], ci_method, level, threshold, scores=s[idx],
                                          clusters=None if ids is None else list(ids[idx]))
        m = diag["metrics"]
        status = "ok" if diag["roc_auc"]["value"] is not None else "AUC n/a: one class only"
        rows.append({"value": value, "n": len(idx), "positives": positives, "negatives": len(idx) - positives,
                     "status": status, "sensitivity": m["sensitivity"], "specificity": m["specificity"],
                     "roc_auc": diag["roc_auc"], "unit_of_analysis": diag["unit_of_analysis"]["text"]})
    return rows


def subgroups(columns, covariates: list[dict], labels, probabilities, scores, threshold: float, ci_method: str,
              level: float, min_n: int, clusters=None) -> dict:
    """The report's ``subgroups`` section: {column: rows}; ``covariates[i]`` is image i's
    manifest columns (the caller checked the column names with ``check_columns``);
    ``clusters``: patient ids aligned with the images, or None."""
    out = {}
    for column in columns:
        out[column] = subgroup_rows([c.get(column, "") for c in covariates], labels, probabilities, scores,
                                    threshold, ci_method, level, min_n, clusters)
    unit = clustered.unit_of_analysis(clusters, len(labels))
    return {"threshold": threshold, "min_subgroup": min_n, "columns": out,
            "clustered": unit["clustered_by"] == "patient", "unit_of_analysis": unit["text"]}


def markdown(section: dict) -> str:
    def pct(m):
        return stats.value_with_interval(m, percent=True)

    def auc(m):
        return stats.value_with_interval(m, percent=False)

    lines = []
    for column, rows in section["columns"].items():
        lines += [f"#### Subgroups by `{column}` (threshold {section['threshold']:g})", "",
                  "| value | n | GIST/LM | sensitivity | specificity | ROC AUC | status |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            lines.append(f"| {r['value']} | {r['n']} | {r['positives']}/{r['negatives']} | {pct(r['sensitivity'])} | "
                         f"{pct(r['specificity'])} | {auc(r['roc_auc'])} | {r['status']} |")
        lines.append("")
    if lines and section.get("unit_of_analysis"):
        lines += [f"Unit of analysis: {section['unit_of_analysis']}"
                  + ("; every interval is clustered by patient." if section.get("clustered") else "."), ""]
    return "\n".join(lines)
