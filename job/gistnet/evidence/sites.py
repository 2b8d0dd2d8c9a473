"""Performance across sites: per-site metrics and a random-effects meta-analysis of per-site
ROC AUC on the logit scale (the heterogeneity of "internal-external" cross-validation).

Each site's AUC and its DeLong variance (``compare.delong``) move to the logit scale by the
delta method, var(logit A) = var(A) / (A (1 - A))^2. The sites are pooled with statsmodels'
``combine_effects`` (DerSimonian-Laird tau^2, truncated at 0 as DerSimonian and Laird do:
statsmodels leaves a negative moment estimate as it is, so with tau^2 <= 0 the fixed-effect
mean is the random-effects mean). The 95% prediction interval for the AUC of a new site is
mu +- t(k-2) sqrt(tau^2 + se(mu)^2) (Higgins, Thompson & Spiegelhalter 2009), back-transformed;
with 3 sites t has 1 degree of freedom and the interval is very wide, which the report says.

The pooled AUC's confidence interval is Hartung-Knapp-Sidik-Jonkman's (t with k-1 df and the
variance from the weighted residuals, statsmodels' ``var_hksj_re``; ``var_hksj_fe`` when tau^2
is truncated at 0) by default with fewer than 10 sites, where DerSimonian-Laird's z interval can
be too narrow, and DerSimonian-Laird's z from 10 sites on (``evaluate.meta_analysis_interval``:
``auto``, ``hksj`` or ``dl``). HKSJ's scale q* (residual variance over the DL variance) is taken
as at least 1 (Knapp & Hartung 2003; Roever, Knapp & Friede 2015): when the sites agree more than
their variances expect, plain HKSJ would be narrower than the z interval. Both are reported
(``intervals``), the chosen one named.

With patient ids where a patient has several images (``clusters``), every per-site interval is
clustered by patient (``evaluate.diagnostic_report``), and a site's AUC variance is Obuchowski's
clustered one (``clustered.obuchowski``) instead of DeLong's, so the meta-analysis weighs
patients, not repeated images; the section states the unit of analysis.

A site whose AUC is 0 or 1 (complete separation: the DeLong variance is 0 and the logit
infinite) enters with a continuity correction: AUC' = (U + 0.5) / (m n + 1), U being the
Mann-Whitney count, and the Hanley & McNeil (1982) variance of AUC' (clustered: with m and n
the numbers of patients with a positive and with a negative image). Only AUC 0 or 1 is
corrected: a site with another AUC whose variance cannot be estimated (one positive or
negative image; clustered: one patient with a positive or a negative image; or a variance of
0) keeps its AUC and is left out of the pooling, with the reason stated. A site with one class
has no AUC, sensitivity or specificity (whichever needs the missing class): n/a, stated,
and it is left out of the meta-analysis.
``tests/evidence/test_sites.py`` recomputes all of it by hand.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.stats import norm, t as student_t

from gistnet.evidence import clustered, compare
from gistnet.evidence import evaluate, stats

CORRECTION = ("continuity correction: AUC 0 or 1 replaced by (U + 0.5) / (m n + 1) with the Hanley-McNeil "
              "variance, so that its logit is finite")
ONE_CLASS = "n/a: the site has images of one class only"
NO_VARIANCE = "n/a in the meta-analysis: the variance of the site's AUC cannot be estimated"
FEW_SITES = ("with k sites the prediction interval uses t with k-2 degrees of freedom: with few sites it is very "
             "wide, an honest statement of how little k sites say about a new one")


def hanley_mcneil_variance(auc: float, m: int, n: int) -> float:
    """Var(AUC) by Hanley & McNeil (1982), m positives and n negatives."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    return (auc * (1 - auc) + (m - 1) * (q1 - auc * auc) + (n - 1) * (q2 - auc * auc)) / (m * n)


DELONG, OBUCHOWSKI = "DeLong", "Obuchowski (clustered by patient)"
AUTO, HKSJ, DL = "auto", "hksj", "dl"  # evaluate.meta_analysis_interval
INTERVALS = (AUTO, HKSJ, DL)
INTERVAL_NAMES = {HKSJ: "Hartung-Knapp-Sidik-Jonkman", DL: "DerSimonian-Laird (z)"}
HKSJ_BELOW = 10  # auto: HKSJ with fewer sites than this


def logit_auc(labels, scores, clusters=None) -> dict | None:
    """A site's AUC, its variance and their logit-scale versions; None with one class. With
    ``clusters`` (a patient with several images) the variance is Obuchowski's."""
    y = np.asarray(labels).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        return None
    s = np.asarray(scores, dtype=np.float64)[None, :]
    groups = clustered.codes(clusters, len(y))
    if groups is None:
        aucs, cov = compare.delong(s, y.astype(int))
        method, hm_m, hm_n = DELONG, m, n
    else:
        aucs, cov = clustered.obuchowski(s, y, groups)
        method, hm_m, hm_n = OBUCHOWSKI, len(set(groups[y].tolist())), len(set(groups[~y].tolist()))
    auc, variance = float(aucs[0]), float(cov[0, 0])
    counts = {"positives": m, "negatives": n, "variance_method": method}
    corrected = False
    if auc <= 0.0 or auc >= 1.0:
        u = auc * m * n
        auc = (u + 0.5) / (m * n + 1)
        variance = hanley_mcneil_variance(auc, hm_m, hm_n)
        corrected = True
    elif not (math.isfinite(variance) and variance > 0):
        return {"auc": auc, "variance": None, "logit": None, "variance_logit": None, "corrected": False,
                "excluded": no_variance_reason(method, hm_m, hm_n), **counts}
    return {"auc": auc, "variance": variance, "logit": math.log(auc / (1 - auc)),
            "variance_logit": variance / (auc * (1 - auc)) ** 2, "corrected": corrected, **counts}


def no_variance_reason(method: str, positives: int, negatives: int) -> str:
    """Why a site's AUC (neither 0 nor 1) has no variance: ``positives``/``negatives`` count images,
    or patients when the variance is Obuchowski's."""
    for count, cls in ((positives, "positive"), (negatives, "negative")):
        if count < 2:
            one = f"one patient with a {cls} image" if method == OBUCHOWSKI else f"one {cls} image"
            return f"{NO_VARIANCE} ({one}: the {method} variance is not defined); its AUC is not corrected"
    return f"{NO_VARIANCE} (its {method} variance is 0); its AUC is not corrected"


def _expit(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _pooled(mu: float, half: float) -> dict:
    return {"value": _expit(mu), "ci_low": _expit(mu - half), "ci_high": _expit(mu + half)}


def _choice(setting: str, chosen: str, k: int) -> str:
    """Why the pooled AUC's interval is the one it is (evaluate.meta_analysis_interval)."""
    name = INTERVAL_NAMES[chosen]
    if setting != AUTO:
        return f"{name} (evaluate.meta_analysis_interval: {setting})"
    if chosen == HKSJ:
        return (f"{name}, the default with fewer than {HKSJ_BELOW} sites: with {k} sites the z interval of "
                "DerSimonian-Laird can be too narrow")
    return f"{name}, the default with {HKSJ_BELOW} or more sites"


def meta_analysis(names: list[str], effects, variances, level: float = 0.95, interval: str = AUTO) -> dict:
    """Random-effects (DerSimonian-Laird tau^2) pooling of logit AUCs: pooled AUC with its interval
    (``interval``: Hartung-Knapp-Sidik-Jonkman, DerSimonian-Laird's z, or ``auto``: HKSJ with fewer
    than ``HKSJ_BELOW`` sites), both intervals, tau^2, I^2, Cochran's Q and the prediction interval
    for a new site (t, k-2 df)."""
    from statsmodels.stats.meta_analysis import combine_effects

    y, v = np.asarray(effects, dtype=np.float64), np.asarray(variances, dtype=np.float64)
    k = len(y)
    if k < 2:
        return {"k": k, "status": "n/a: fewer than 2 sites with both classes", "sites": list(names)}
    with warnings.catch_warnings():  # a negative DL moment estimate makes statsmodels take sqrt of < 0
        warnings.simplefilter("ignore", RuntimeWarning)
        res = combine_effects(y, v, method_re="dl", row_names=list(names))
    tau2 = max(0.0, float(res.tau2))
    if tau2 > 0:
        mu, se, var_hksj = float(res.mean_effect_re), float(res.sd_eff_w_re), float(res.var_hksj_re)
    else:  # DL truncated at 0: the random-effects mean is the fixed-effect mean (HKSJ's weights too)
        mu, se, var_hksj = float(res.mean_effect_fe), float(res.sd_eff_w_fe), float(res.var_hksj_fe)
    q, df = float(res.q), k - 1
    i2 = max(0.0, (q - df) / q) if q > 0 else 0.0
    z, t = float(norm.ppf(0.5 + level / 2)), float(student_t.ppf(0.5 + level / 2, df))
    scale = var_hksj / (se * se)  # HKSJ's q*: the weighted residual variance
    se_hksj = se * math.sqrt(max(1.0, scale))
    intervals = {
        HKSJ: {**_pooled(mu, t * se_hksj), "se_logit": se_hksj, "df": df, "scale": scale,
               "method": f"Hartung-Knapp-Sidik-Jonkman: t with {df} df, se from the weighted residuals "
                         f"(scale q* = {scale:.3g}{' < 1, taken as 1' if scale < 1 else ''}: never narrower than "
                         "DerSimonian-Laird's z)"},
        DL: {**_pooled(mu, z * se), "se_logit": se, "df": None, "method": "DerSimonian-Laird: normal (z)"},
    }
    chosen = (HKSJ if k < HKSJ_BELOW else DL) if interval == AUTO else interval
    out = {
        "k": k, "sites": list(names), "scale": "logit(AUC)", "method": "random effects, DerSimonian-Laird "
        "(statsmodels combine_effects), tau^2 truncated at 0",
        "pooled_logit": mu, "pooled_logit_se": se,
        "pooled_auc": intervals[chosen], "interval": chosen, "interval_choice": _choice(interval, chosen, k),
        "intervals": intervals,
        "tau2": tau2, "i2": i2, "q": q, "q_df": df, "confidence_level": level,
    }
    if k >= 3:
        half = float(student_t.ppf(0.5 + level / 2, k - 2)) * math.sqrt(tau2 + se * se)
        out["prediction_interval"] = {"ci_low": _expit(mu - half), "ci_high": _expit(mu + half), "df": k - 2,
                                      "note": FEW_SITES}
    else:
        out["prediction_interval"] = {"ci_low": None, "ci_high": None, "df": k - 2,
                                      "note": "n/a: a prediction interval needs at least 3 sites (t with k-2 df)"}
    return out


def per_site(sites, labels, probabilities, scores, threshold: float, ci_method: str, level: float,
             clusters=None) -> list[dict]:
    """One row per site: n, counts, sensitivity, specificity and AUC with intervals (n/a, stated,
    where the site lacks the class a metric needs), clustered by patient with ``clusters``."""
    sites = [str(s) for s in sites]
    ids = None if clusters is None else np.asarray([str(c or "") for c in clusters], dtype=object)
    y = np.asarray(labels).astype(int)
    p, s = np.asarray(probabilities, np.float64), np.asarray(scores, np.float64)
    rows = []
    for site in sorted(set(sites)):
        idx = np.array([i for i, v in enumerate(sites) if v == site])
        site_ids = None if ids is None else list(ids[idx])
        diag = evaluate.diagnostic_report(y[idx], p[idx], ci_method, level, threshold, scores=s[idx],
                                          clusters=site_ids)
        positives = int(y[idx].sum())
        row = {"site": site, "n": len(idx), "positives": positives, "negatives": len(idx) - positives,
               "confusion_matrix": diag["confusion_matrix"],
               "sensitivity": diag["metrics"]["sensitivity"], "specificity": diag["metrics"]["specificity"],
               "accuracy": diag["metrics"]["accuracy"], "roc_auc": diag["roc_auc"],
               "unit_of_analysis": diag["unit_of_analysis"]["text"]}
        one = logit_auc(y[idx], s[idx], site_ids)
        if one is None:
            row["note"] = ONE_CLASS
        elif "excluded" in one:
            row["note"] = one["excluded"]
        elif one["corrected"]:
            row["roc_auc_corrected"] = one["auc"]
            row["note"] = CORRECTION
        row["_logit"] = one
        rows.append(row)
    return rows


def heterogeneity(sites, labels, probabilities, scores, threshold: float, ci_method: str, level: float,
                  clusters=None, interval: str = AUTO) -> dict:
    """The report's ``sites`` section: per-site rows and the meta-analysis of their AUCs (their
    variances clustered by patient with ``clusters``; the pooled interval by ``interval``)."""
    rows = per_site(sites, labels, probabilities, scores, threshold, ci_method, level, clusters)
    usable = [r for r in rows if r["_logit"] is not None and "excluded" not in r["_logit"]]
    meta = meta_analysis([r["site"] for r in usable], [r["_logit"]["logit"] for r in usable],
                         [r["_logit"]["variance_logit"] for r in usable], level, interval)
    unit = clustered.unit_of_analysis(clusters, len(labels))
    meta["auc_variance"] = OBUCHOWSKI if unit["clustered_by"] == "patient" else DELONG
    meta["left_out"] = [{"site": r["site"], "reason": ONE_CLASS if r["_logit"] is None else r["_logit"]["excluded"]}
                        for r in rows if r["_logit"] is None or "excluded" in r["_logit"]]
    meta["corrected"] = [r["site"] for r in usable if r["_logit"]["corrected"]]
    if meta["corrected"]:
        meta["correction"] = CORRECTION
    for r in rows:
        one = r.pop("_logit")
        r["logit_auc"] = None if one is None or "excluded" in one else {
            "value": one["logit"], "variance": one["variance_logit"], "variance_method": one["variance_method"]}
    return {"per_site": rows, "meta_analysis": meta, "threshold": threshold,
            "clustered": unit["clustered_by"] == "patient", "unit_of_analysis": unit["text"]}


def markdown(section: dict, title: str = "Sites") -> str:
    """Per-site table and the meta-analysis, for report.md."""
    def pct(m):
        return stats.value_with_interval(m, percent=True)

    def auc(m):
        return stats.value_with_interval(m, percent=False)

    lines = [f"### {title}", "", "| site | n | GIST/LM | sensitivity | specificity | ROC AUC | note |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in section["per_site"]:
        lines.append(f"| {r['site']} | {r['n']} | {r['positives']}/{r['negatives']} | {pct(r['sensitivity'])} | "
                     f"{pct(r['specificity'])} | {auc(r['roc_auc'])} | {r.get('note', '')} |")
    meta = section["meta_analysis"]
    lines.append("")
    if section.get("unit_of_analysis"):
        lines.append(f"Unit of analysis: {section['unit_of_analysis']}"
                     + ("; every interval is clustered by patient and each site's AUC variance is Obuchowski's."
                        if section.get("clustered") else "."))
    if "pooled_auc" not in meta:
        lines.append(f"Meta-analysis: {meta['status']}.")
        return "\n".join(lines)
    pooled, pi = meta["pooled_auc"], meta["prediction_interval"]
    other = meta.get("intervals", {}).get(DL if meta.get("interval") == HKSJ else HKSJ)
    also = (f"; {INTERVAL_NAMES[DL if meta['interval'] == HKSJ else HKSJ]}: "
            f"{stats.interval_text(other['ci_low'], other['ci_high'])}") if other else ""
    lines.append(f"Random-effects pooled AUC ({meta['k']} sites, logit scale, DerSimonian-Laird tau^2): "
                 f"{pooled['value']:.3f} (95% CI {stats.interval_text(pooled['ci_low'], pooled['ci_high'])}, "
                 f"{meta.get('interval_choice', INTERVAL_NAMES[DL])}{also}); "
                 f"tau^2 = {meta['tau2']:.3f}, I^2 = {meta['i2'] * 100:.0f}%, Q = {meta['q']:.2f} on {meta['q_df']} df.")
    if pi["ci_low"] is not None:
        lines.append(f"95% prediction interval for a new site: {stats.interval_text(pi['ci_low'], pi['ci_high'])} "
                     f"(t, {pi['df']} df; {pi['note']}).")
    else:
        lines.append(f"Prediction interval: {pi['note']}.")
    if meta.get("corrected"):
        lines.append(f"Sites {', '.join(meta['corrected'])}: {meta['correction']}.")
    for left in meta.get("left_out", []):
        lines.append(f"Site {left['site']} left out of the meta-analysis: {left['reason']}.")
    return "\n".join(lines)
