"""Pooling finished (fold, model) units into the run's report, the way nnU-Net summarises
each fold and the pooled cross-validation beside them.

The aggregation reads only stored objects and seeds its bootstrap, so two processes
aggregating at once write the same bytes. ``report.json`` is written after the figures and
predictions, compare-and-swap (``evidence/publish.py``), and its documents (report.md/html,
checklist, model cards) only by the process whose report won: its presence with ``status:
complete`` marks the run complete.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass

import numpy as np

from gistnet.config import Config
from gistnet.data import split
from gistnet.data.runs import DATASET, RESULT, Unit, all_units, gradcam_key, is_finished
from gistnet.data.storage import Store
from gistnet.errors import DataError
from gistnet.evidence import (calibration, checklist, compare, decision, evaluate, explain, kclasses, model_card,
                              predictions, publish, report, report_html, sections, stats)

log = logging.getLogger(__name__)

FOLD_METRICS = ("roc_auc", "accuracy", "sensitivity", "specificity")


@dataclass
class Pooled:
    """One model's predictions over every finished unit, in a fixed order."""

    keys: list[str]
    labels: np.ndarray
    probabilities: np.ndarray
    scores: np.ndarray
    youden: np.ndarray  # the threshold of the fold each image was validated in
    clusters: list[str]  # patient id per image ("" without one): intervals cluster by patient
    lesions: list | None = None  # kclasses.sections' lesion table, when the rows have p_<class> columns
    class_correct: np.ndarray | None = None  # with p_<class> columns: is the most probable class the true one


def _pool(rows_by_unit: dict[Unit, list], results: dict[Unit, dict], positive: str) -> Pooled:
    rows = [(r, results[u]["youden_threshold"]) for u in rows_by_unit for r in rows_by_unit[u]]
    rows.sort(key=lambda pair: pair[0].key)
    return Pooled([r.key for r, _ in rows], np.array([r.label == positive for r, _ in rows], int),
                  np.array([r.probability for r, _ in rows]), np.array([r.score for r, _ in rows]),
                  np.array([t for _, t in rows]), [r.patient_id for r, _ in rows],
                  class_correct=kclasses.called_right([r for r, _ in rows]))


def _thresholds(pooled: Pooled, primary: dict, config: Config, kfold: bool) -> dict:
    cm = evaluate.confusion(pooled.labels, pooled.probabilities >= pooled.youden, 0.5)
    level, method = config.evaluate.confidence_level, config.evaluate.ci_method
    chosen_on = "each fold's training part" if kfold else "the training images"
    return {
        "primary": {"value": 0.5, "pre_specified": True, "confusion_matrix": primary["confusion_matrix"],
                    "metrics": primary["metrics"]},
        "youden": {"exploratory": True, "chosen_on": f"Youden's J on {chosen_on} (unaugmented), never on validation",
                   "values": sorted({float(t) for t in pooled.youden}), "confusion_matrix": cm,
                   "metrics": stats.diagnostic_metrics(pooled.labels, pooled.probabilities >= pooled.youden, method,
                                                       level, pooled.clusters)},
    }


def _fold_row(unit: Unit, rows: list, result: dict, config: Config) -> dict:
    positive = config.data.positive_class
    y = np.array([r.label == positive for r in rows], int)
    diag = evaluate.diagnostic_report(y, [r.probability for r in rows], config.evaluate.ci_method,
                                      config.evaluate.confidence_level, scores=[r.score for r in rows])
    return {"fold": unit.fold, "n": len(rows), "counts": result["counts"], "history": result["history"],
            "checkpoint": result["checkpoint"], "resumable_checkpoint": result["resumable_checkpoint"],
            "resumed_from_epoch": result["resumed_from_epoch"], "confusion_matrix": diag["confusion_matrix"],
            "youden_threshold": result["youden_threshold"], "roc_auc": diag["roc_auc"]["value"],
            **{m: diag["metrics"][m]["value"] for m in FOLD_METRICS if m != "roc_auc"}}


def _across(folds: list[dict]) -> dict:
    """Mean and SD across folds (describes fold-to-fold spread; the CIs come from pooling)."""
    out = {}
    for metric in FOLD_METRICS:
        values = [f[metric] for f in folds if f[metric] is not None]
        out[metric] = {"mean": statistics.fmean(values) if values else None,
                       "sd": statistics.stdev(values) if len(values) > 1 else None, "n_folds": len(values)}
    return out


def _model_section(model_units: list[Unit], rows_by_unit: dict, results: dict, config: Config, kfold: bool):
    pooled = _pool({u: rows_by_unit[u] for u in model_units}, results, config.data.positive_class)
    level = config.evaluate.confidence_level
    section = evaluate.diagnostic_report(pooled.labels, pooled.probabilities, config.evaluate.ci_method, level,
                                         scores=pooled.scores, clusters=pooled.clusters)
    section["calibration"] = calibration.calibration(pooled.labels, pooled.probabilities, pooled.scores)
    section["thresholds"] = _thresholds(pooled, section, config, kfold)
    if kfold:
        section["folds"] = [_fold_row(u, rows_by_unit[u], results[u], config) for u in model_units]
        section["across_folds"] = _across(section["folds"])
    else:
        result = results[model_units[0]]
        section.update({k: result[k] for k in ("history", "checkpoint", "resumable_checkpoint", "resumed_from_epoch")})
    unit_rows = [r for u in model_units for r in rows_by_unit[u]]
    if unit_rows and all(r.class_probabilities for r in unit_rows):  # K classes and lesions (issue 27)
        section["multiclass"], section["by_lesion"], pooled.lesions = kclasses.sections(
            unit_rows, config.data.head_classes, config.evaluate.ci_method, level, config.train.seed)
    explained = {u.fold: results[u]["explain"] for u in model_units if "explain" in results[u]}
    if explained:
        section["explain"] = explain.combine(explained) if kfold else explained[None]
    return section, pooled


def _comparison(names: list[str], pooled: dict[str, Pooled], config: Config) -> dict | None:
    if len(names) < 2:
        return None
    first, second = pooled[names[0]], pooled[names[1]]
    if first.keys != second.keys:
        return None  # not the same images yet (a missing unit): no paired comparison
    correct = tuple((p.probabilities >= 0.5).astype(int) == p.labels for p in (first, second))
    multi = len(config.data.head_classes) > 2 and first.class_correct is not None and second.class_correct is not None
    return compare.compare((names[0], names[1]), first.labels, (first.scores, second.scores), correct,
                           config.evaluate.confidence_level, config.train.seed, clusters=first.clusters,
                           correct_class=(first.class_correct, second.class_correct) if multi else None)


def load_finished(out: Store, expected: list[Unit]) -> tuple[dict, dict]:
    """The result and predictions of every finished unit among ``expected``."""
    results, rows = {}, {}
    for unit in expected:
        if is_finished(out, unit):
            results[unit] = json.loads(out.read(unit.key(RESULT)))
            rows[unit] = predictions.read(out, unit.key(predictions.FILENAME))
    return results, rows


def aggregate(out: Store, config: Config, run_id: str, scratch: str) -> dict:
    """Pool every finished unit into the report and write it; name the missing ones.

    With every unit finished the report is ``complete``; otherwise it is ``partial`` and
    says which (fold, model) units are missing. No finished unit at all is a DataError.
    ``report.json`` is written compare-and-swap (``evidence.publish``): never complete ->
    partial, never over a report that pools more units.
    """
    return publish.publish(out, lambda: _aggregate_once(out, config, run_id, scratch))


def _aggregate_once(out: Store, config: Config, run_id: str, scratch: str):
    expected = all_units(config)
    results, rows = load_finished(out, expected)
    if not results:
        raise DataError(f"{out.uri}: no finished fold to aggregate (none of the {len(expected)} (fold, model) "
                        f"units has a {RESULT}); train first")
    missing = [u for u in expected if u not in results]
    kfold = config.split.method in (split.KFOLD, split.SITE)
    models, pooled = {}, {}
    for name in config.train.models:
        done = [u for u in expected if u.model == name and u in results]
        if done:
            models[name], pooled[name] = _model_section(done, rows, results, config, kfold)
    dataset_section = json.loads(out.read(DATASET))
    if not kfold:
        dataset_section.update(results[next(iter(results))]["counts"])
    evaluation = {"method": config.split.method, "folds": config.split.folds if kfold else 1, "pooled": kfold,
                  "finished": [u.to_dict() for u in expected if u in results],
                  "missing": [u.to_dict() for u in missing]}
    if missing:
        log.warning("aggregating %d of %d units; missing: %s", len(results), len(expected),
                    ", ".join(u.name() for u in missing))
    decision_curve = sections.add(models, pooled, config.evaluate, sections.read_covariates(out),
                                  with_sites=config.split.method == split.SITE)  # subgroups, sites, decision curves
    _plots(out, models, pooled, results, scratch)
    out.upload_drawn("decision_curve.png", lambda path: decision.figure(decision_curve, path), scratch)
    artifacts = {}
    all_rows = [r for u in expected if u in rows for r in rows[u]]
    predictions.write(out, all_rows)
    tables = {name: p.lesions for name, p in pooled.items() if p.lesions is not None}
    if tables:
        out.write_bytes(kclasses.LESIONS_FILE, kclasses.lesions_csv(tables))
        if len(config.data.head_classes) > 2:  # two classes: the report's 2 x 2 table says it all, as before
            out.upload_drawn("confusion.png", lambda path: kclasses.confusion_figure(models, path), scratch)
        artifacts.update({"lesions": out.uri_of(kclasses.LESIONS_FILE)})
    first = next(u for u in expected if u in results)
    figures = {name: key for name, key in _figure_keys(expected, results, first).items() if out.exists(key)}
    artifacts.update({name: out.uri_of(key) for name, key in figures.items()})
    artifacts.update({"config": out.uri_of("config.yaml"), "split": out.uri_of("split.json"),
                      "predictions": out.uri_of(predictions.FILENAME), "report_markdown": out.uri_of("report.md"),
                      "report_html": out.uri_of("report.html"), "checklist": out.uri_of("checklist.md")})
    artifacts.update({f"model_card_{name}": out.uri_of(f"{name}/{model_card.CARD}") for name in models})
    final = report.build(
        run_id, config.to_dict(), dataset_section, models, config.evaluate.selection_metric, artifacts,
        environment=results[first]["environment"], created=max(r["finished"] for r in results.values()),
        evaluation=evaluation, comparison=_comparison(list(models), pooled, config),
        status="partial" if missing else "complete")
    final["decision_curve"] = decision_curve
    report.validate(final)
    return final, lambda: _write_documents(out, final, figures)


def _figure_keys(expected: list[Unit], results: dict, first: Unit) -> dict[str, str]:
    """Figure name (as report_html places it) -> stored key: the run's plots, Fig 2 of the first
    finished fold, and each finished unit's Grad-CAM gallery."""
    figures = {"training_curves": "training_curves.png", "roc": "roc.png", "reliability_diagram": "reliability.png",
               "confusion": "confusion.png",
               "augmentation_examples": f"{first.prefix}augmentation_examples.png", "decision_curve": "decision_curve.png"}
    for unit in expected:
        if unit in results and "explain" in results[unit]:
            name = f"gradcam_{unit.model}" if unit.fold is None else f"gradcam_{unit.model}_fold{unit.fold}"
            figures[name] = gradcam_key(unit)
    return figures


def _write_documents(out: Store, final: dict, figures: dict[str, str]) -> None:
    """Model cards (one per architecture; a k-fold run's card is its fold ensemble's), report.md,
    report.html and checklist.md; written once this process's report.json won its compare-and-swap (``publish``)."""
    for name in final["models"]:
        out.write_bytes(f"{name}/{model_card.CARD}", model_card.render(final, name).encode())
    out.write_bytes("report.md", report.markdown(final).encode())
    out.write_bytes("report.html", report_html.render(final, {n: out.read(k) for n, k in figures.items()}).encode())
    out.write_bytes("checklist.md", checklist.markdown(final).encode())


def _plots(out: Store, models: dict, pooled: dict[str, Pooled], results: dict, scratch: str) -> None:
    """training_curves.png, roc.png (pooled) and reliability.png at the run root."""
    histories = {u.name(): results[u]["history"] for u in results}
    curves = {name: {"curve": evaluate.roc_curve_points(pooled[name].labels, pooled[name].scores),
                     "auc": m["roc_auc"]["value"] or 0.0} for name, m in models.items()}
    draws = {
        "training_curves.png": lambda p: report.training_curves(histories, p),
        "roc.png": lambda p: report.roc_figure(curves, p),
        "reliability.png": lambda p: calibration.reliability_diagram(
            {n: m["calibration"] for n, m in models.items()}, p),
    }
    for key, draw in draws.items():
        out.upload_drawn(key, draw, scratch)
