"""A reader study's numbers: each reader, the modalities compared, and the model against the readers.

Pure functions of arrays (ratings, calls, truth, patient ids, the model's scores) returning
plain dicts for ``readers.json``; the documents are ``gistnet.evidence.readers_report``'s.
The modality comparison is Obuchowski-Rockette (``gistnet.evidence.mrmc``); per-reader
intervals are the run's binomial method, clustered by patient when a patient has several
cases; paired sensitivity/specificity differences against each reader use McNemar's test on
the positives (negatives) alone (exact, or clustered when patients repeat).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gistnet.evidence import clustered, compare, evaluate, mrmc, stats


@dataclass(frozen=True)
class Study:
    """What the readers file and the data set say, as arrays over (modality, reader, case)."""

    modalities: tuple[str, ...]
    readers: tuple[str, ...]
    cases: tuple[str, ...]
    truth: np.ndarray  # (cases,) 1 = the positive class
    ratings: np.ndarray | None  # (modalities, readers, cases) or None when only calls were given
    calls: np.ndarray | None  # (modalities, readers, cases) 1 = called positive, or None
    clusters: list | None  # patient id per case, or None


@dataclass(frozen=True)
class Model:
    """The model's score per case (logit margin of the positive class) and its frozen thresholds."""

    name: str
    scores: np.ndarray
    thresholds: dict  # name -> threshold on the score scale (margins), frozen by the development run


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _difference(d: mrmc.Difference) -> dict:
    return {"a": d.a, "b": d.b, "difference": d.difference, "se": d.se, "df": _finite(d.df), "p": d.p,
            "ci_low": d.ci_low, "ci_high": d.ci_high}


def analysis_dict(a: mrmc.Analysis) -> dict:
    """One OR analysis in readers.json's shape (the first pair's difference at the top level)."""
    first = _difference(a.differences[0]) if a.differences else {}
    return {"statistic": a.statistic, "distribution": a.distribution, "ndf": a.ndf, "ddf": _finite(a.ddf),
            "p": a.p, "difference": first.get("difference"), "ci_low": first.get("ci_low"),
            "ci_high": first.get("ci_high"), "differences": [_difference(d) for d in a.differences],
            "modalities": [{"modality": m.modality, "auc": m.auc, "se": m.se, "df": _finite(m.df),
                            "ci_low": m.ci_low, "ci_high": m.ci_high} for m in a.modalities],
            "note": a.note or None}


def or_section(study: Study, covariance: str, alpha: float) -> dict:
    """Modalities compared by Obuchowski-Rockette (RRRC, FRRC, RRFC), or why not."""
    if study.ratings is None:
        return {"available": False, "note": "the readers gave calls but no ratings: no reader ROC curve, so no AUC "
                                            "and no Obuchowski-Rockette analysis"}
    ratings = mrmc.Ratings(study.modalities, study.readers, study.cases, study.truth, study.ratings)
    result = mrmc.or_analysis(ratings, covariance=covariance, alpha=alpha)
    notes = []
    if len(study.modalities) < 2:
        notes.append("one modality: no modality comparison (the model against the readers still is)")
    if len(study.readers) < 2:
        notes.append("one reader: readers cannot be treated as random; the fixed-reader analysis (FRRC) is given")
    c = result.components
    return {"available": True, "covariance": covariance, "figure_of_merit": "empirical (trapezoidal) AUC",
            "foms": {"readers": list(study.readers), "modalities": list(study.modalities),
                     "values": [[float(v) for v in row] for row in result.foms.T]},
            "components": {"var": c.var, "cov1": c.cov1, "cov2": c.cov2, "cov3": c.cov3},
            "mean_squares": {"t": _finite(result.ms_t), "r": _finite(result.ms_r), "tr": _finite(result.ms_tr)},
            "rrrc": analysis_dict(result.rrrc), "frrc": analysis_dict(result.frrc),
            "rrfc": analysis_dict(result.rrfc), "note": "; ".join(notes) or None}


def per_reader(study: Study, ci_method: str, level: float) -> list[dict]:
    """Each reader in each modality: AUC (ratings) and sensitivity/specificity (calls)."""
    rows = []
    for i, modality in enumerate(study.modalities):
        for j, reader in enumerate(study.readers):
            row = {"reader": reader, "modality": modality}
            if study.ratings is not None:
                row["auc"] = compare.auc_interval(study.ratings[i, j], study.truth, level, study.clusters)
            else:
                row["auc"] = {"value": None, "ci_low": None, "ci_high": None,
                              "note": "no ratings: the AUC needs a rating per case"}
            if study.calls is not None:
                m = stats.diagnostic_metrics(study.truth, study.calls[i, j], ci_method, level, study.clusters)
                row["sensitivity"], row["specificity"] = m["sensitivity"], m["specificity"]
            rows.append(row)
    return rows


def matched_threshold(scores: np.ndarray, truth: np.ndarray, specificity: float) -> float:
    """The lowest threshold on ``scores`` whose specificity is at least ``specificity``."""
    negatives = np.sort(np.asarray(scores, float)[np.asarray(truth) == 0])
    for t in np.unique(np.r_[np.asarray(scores, float), np.inf]):
        if (negatives < t).mean() >= specificity - 1e-12:
            return float(t)
    return math.inf


def _versus(model_calls, reader_calls, truth, clusters, readers) -> list[dict]:
    """Paired sensitivity and specificity differences, model minus each reader."""
    rows = []
    for reader, calls in zip(readers, reader_calls):
        row = {"reader": reader}
        for name, among in (("sensitivity", truth == 1), ("specificity", truth == 0)):
            right_model = (model_calls == truth)[among]
            right_reader = (calls == truth)[among]
            sub = None if clusters is None else [c for c, k in zip(clusters, among) if k]
            test = compare.mcnemar_test(right_model, right_reader, sub)
            row[name] = {"difference": float(right_model.mean() - right_reader.mean()), "p": test["p"],
                         "method": test["method"], "note": test.get("note")}
        rows.append(row)
    return rows


def model_section(study: Study, model: Model, ci_method: str, level: float, covariance: str, alpha: float) -> dict:
    """The model against the readers, in each modality."""
    truth = study.truth
    section = {"name": model.name, "auc": compare.auc_interval(model.scores, truth, level, study.clusters),
               "roc": evaluate.roc_curve_points(truth, model.scores), "by_modality": {}}
    for i, modality in enumerate(study.modalities):
        part: dict = {}
        if study.ratings is not None:
            a = mrmc.model_versus_readers(truth, model.scores, study.ratings[i], study.readers, alpha, covariance)
            part["auc"] = {**analysis_dict(a), "method": mrmc.MODEL_VERSUS_READERS_METHOD,
                           "model_auc": float(mrmc.empirical_auc(truth, model.scores)),
                           "readers_auc": float(mrmc.empirical_auc(truth, study.ratings[i]).mean())}
        if study.calls is not None:
            reader_calls = study.calls[i].astype(int)
            spec = float(np.mean([(c[truth == 0] == 0).mean() for c in reader_calls]))
            thresholds = {**model.thresholds, "matched to the readers' mean specificity":
                          matched_threshold(model.scores, truth, spec)}
            points = []
            for label, t in thresholds.items():
                model_calls = (model.scores >= t).astype(int)
                metrics = stats.diagnostic_metrics(truth, model_calls, ci_method, level, study.clusters)
                points.append({"threshold_name": label, "threshold": _finite(float(t)),
                               "sensitivity": metrics["sensitivity"], "specificity": metrics["specificity"],
                               "versus_readers": _versus(model_calls, reader_calls, truth, study.clusters,
                                                         study.readers)})
            part["readers_mean_specificity"] = spec
            part["operating_points"] = points
        section["by_modality"][modality] = part
    return section


def reader_points(study: Study) -> dict:
    """Each reader's operating point (1 - specificity, sensitivity) per modality, for the figure."""
    if study.calls is None:
        return {}
    truth = study.truth
    out: dict = {}
    for j, reader in enumerate(study.readers):
        out[reader] = {}
        for i, modality in enumerate(study.modalities):
            calls = study.calls[i, j].astype(int)
            out[reader][modality] = {"fpr": float(calls[truth == 0].mean()), "tpr": float(calls[truth == 1].mean())}
    return out


def analyse(study: Study, model: Model | None, ci_method: str = "wilson", level: float = 0.95,
            covariance: str = "jackknife") -> dict:
    """Everything ``readers.json`` reports, but the document's framing."""
    alpha = 1 - level
    truth = study.truth
    return {"design": {"modalities": list(study.modalities), "readers": list(study.readers),
                       "cases": len(study.cases), "positive": int(truth.sum()), "negative": int((truth == 0).sum()),
                       "ratings": study.ratings is not None, "calls": study.calls is not None,
                       "clustered": clustered.codes(study.clusters, len(truth)) is not None,
                       "unit_of_analysis": clustered.unit_of_analysis(study.clusters, len(truth))["text"]},
            "per_reader": per_reader(study, ci_method, level),
            "or": or_section(study, covariance, alpha),
            "model": model_section(study, model, ci_method, level, covariance, alpha) if model else None,
            "reader_points": reader_points(study)}
