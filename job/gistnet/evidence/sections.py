"""The report sections issue 21 adds to every evaluation kind: the decision curve, per-site
metrics with their heterogeneity (leave-one-site-out and external sets with sites), and
subgroups by manifest column. One call from the aggregation (and from the external
evaluation) adds them; each piece lives in its own module (decision, sites, subgroups).

``covariates.json`` at the run root maps each image key to its manifest columns (``site``
included) for the aggregation, which reads stored objects only.
"""

from __future__ import annotations

import json

from gistnet.evidence import decision
from gistnet.evidence import sites as sites_mod
from gistnet.evidence import subgroups as subgroups_mod

COVARIATES = "covariates.json"


def covariate_map(keys, site_list, covariate_list) -> dict[str, dict[str, str]]:
    """{key: {"site": ..., <column>: ...}} for images with any site or covariate; {} without a manifest header."""
    out = {}
    for i, key in enumerate(keys):
        row = dict(covariate_list[i]) if covariate_list else {}
        if site_list and site_list[i]:
            row["site"] = site_list[i]
        if row:
            out[key] = row
    return out


def columns(covariates: dict[str, dict[str, str]]) -> set[str]:
    return {c for row in covariates.values() for c in row}


def read_covariates(store) -> dict[str, dict[str, str]]:
    try:
        return json.loads(store.read(COVARIATES))
    except FileNotFoundError:
        return {}


def add(models: dict, pooled: dict, evaluate_cfg, covariates: dict[str, dict[str, str]], *,
        with_sites: bool, threshold_of=None) -> dict | None:
    """Add ``sites`` (when ``with_sites``) and ``subgroups`` (when configured) to each model's
    section; return the run's ``decision_curve`` section (None without a model).

    ``pooled[name]`` has ``keys``, ``labels``, ``probabilities``, ``scores`` and ``clusters``
    (patient ids, "" without one; intervals cluster by patient when a patient has several images);
    ``threshold_of(name)`` is the threshold of the per-site and subgroup tables (0.5 by default)."""
    if not pooled:
        return None
    level, method = evaluate_cfg.confidence_level, evaluate_cfg.ci_method
    for name, p in pooled.items():
        threshold = threshold_of(name) if threshold_of else 0.5
        rows = [covariates.get(k, {}) for k in p.keys]
        if with_sites:
            models[name]["sites"] = sites_mod.heterogeneity([r.get("site", "") for r in rows], p.labels,
                                                            p.probabilities, p.scores, threshold, method, level,
                                                            p.clusters, evaluate_cfg.meta_analysis_interval)
        if evaluate_cfg.subgroups:
            models[name]["subgroups"] = subgroups_mod.subgroups(evaluate_cfg.subgroups, rows, p.labels,
                                                                p.probabilities, p.scores, threshold, method, level,
                                                                evaluate_cfg.min_subgroup, p.clusters)
    first = next(iter(pooled.values()))
    same = {n: p.probabilities for n, p in pooled.items() if list(p.keys) == list(first.keys)}
    return decision.decision_curves(first.labels, same)


def markdown(report: dict) -> str:
    """report.md lines for the added sections (empty when there are none)."""
    lines = []
    for name, m in report.get("models", {}).items():
        if "sites" in m:
            lines += [sites_mod.markdown(m["sites"], f"{name}: per site"), ""]
        if "subgroups" in m:
            lines += [f"### {name}: subgroups", "", subgroups_mod.markdown(m["subgroups"])]
    dc = report.get("decision_curve")
    if dc:
        lines += ["## Decision curve", "", dc["how_to_read"], ""]
        for name, ranges in dc["model_above_both"].items():
            spans = ", ".join(f"{a:.2f}-{b:.2f}" for a, b in ranges) or "none"
            lines.append(f"- {name}: net benefit above treat-all and treat-none at thresholds {spans}")
        picks = [i for i, t in enumerate(dc["thresholds"]) if round(t * 100) in (10, 20, 30, 50)]
        lines += ["", "| threshold | " + " | ".join(dc["net_benefit"]) + " | treat all | treat none |",
                  "| --- |" + " --- |" * (len(dc["net_benefit"]) + 2)]
        for i in picks:
            lines.append(f"| {dc['thresholds'][i]:.2f} | " + " | ".join(f"{v[i]:.3f}" for v in dc["net_benefit"].values())
                         + f" | {dc['treat_all'][i]:.3f} | 0 |")
        lines.append("")
    return "\n".join(lines)
