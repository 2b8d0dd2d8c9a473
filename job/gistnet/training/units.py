"""Units of work and their aggregation.

A run is a set of (fold, model) units: one fold (``None``) per model for the hold-out, k
folds per model for k-fold. Each unit writes only under its own prefix (``<model>/`` for
the hold-out, ``folds/<i>/<model>/`` for fold i): weights, checkpoints,
``predictions.csv`` and, last, ``result.json``, whose presence marks the unit finished.
So processes that share a run id and train different folds (or models) never write the
same object, and any of them, or ``gistnet aggregate``, can pool the finished units into
the report. The aggregation reads only stored objects and seeds its bootstrap, so two
processes aggregating at once write the same bytes.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from gistnet.data import augmentation
from gistnet.evidence import calibration
from gistnet.evidence import checklist
from gistnet.training import checkpoint
from gistnet.evidence import compare
from gistnet.data import dataset
from gistnet.training import distributed
from gistnet.training import lease
from gistnet.evidence import evaluate
from gistnet.evidence import explain
from gistnet.evidence import model_card
from gistnet.evidence import predictions
from gistnet.evidence import publish
from gistnet.evidence import report
from gistnet.evidence import report_html
from gistnet.data import split
from gistnet.evidence import stats
from gistnet.training import train
from gistnet.training import compile as compiling
from gistnet.config import Config, replace
from gistnet.errors import ConfigError, DataError
from gistnet.data.split import Split
from gistnet.data.storage import Store, open_store

log = logging.getLogger(__name__)

RESULT = "result.json"
DATASET = "dataset.json"
FOLD_METRICS = ("roc_auc", "accuracy", "sensitivity", "specificity")


@dataclass(frozen=True)
class Unit:
    fold: int | None  # None: the hold-out
    model: str

    @property
    def prefix(self) -> str:
        return "" if self.fold is None else f"folds/{self.fold}/"

    def key(self, name: str) -> str:
        return f"{self.prefix}{self.model}/{name}"

    def store(self, out: Store) -> Store:
        """Where checkpoint.py writes this unit's ``<model>/...`` objects."""
        return out if self.fold is None else out.child(f"folds/{self.fold}")

    def name(self) -> str:
        return report.unit_name(self.to_dict())

    def to_dict(self) -> dict:
        return {"fold": self.fold, "model": self.model}


def units(folds: list[int | None], models) -> list[Unit]:
    return [Unit(fold, model) for fold in folds for model in models]


def all_units(config: Config) -> list[Unit]:
    return units(split.select_folds(None, config.split), config.train.models)


# Set by a Kubernetes Indexed Job in each pod: 0 .. completions - 1.
COMPLETION_INDEX = "JOB_COMPLETION_INDEX"


def select(fold: str | None, model: str | None, config: Config, environ=os.environ) -> list[Unit]:
    """The units this process trains: every one, those of one fold and/or one model, or, with
    ``fold == "auto"``, the one an Indexed Job's completion index names (``fold = index % K``,
    ``model = index // K``, K = the number of folds, 1 for a hold-out)."""
    if fold == "auto":
        if model:
            raise ConfigError("--fold auto picks the model from JOB_COMPLETION_INDEX too; drop --model")
        return [unit_of_index(environ.get(COMPLETION_INDEX), config)]
    models = list(config.train.models)
    if model:
        if model not in models:
            raise ConfigError(f"--model {model} is not one of this run's train.models ({', '.join(models)})")
        models = [model]
    return units(split.select_folds(fold, config.split), models)


def unit_of_index(index: str | None, config: Config) -> Unit:
    folds = split.select_folds(None, config.split)
    total = len(folds) * len(config.train.models)
    if index is None or not index.strip():
        raise ConfigError(f"--fold auto needs {COMPLETION_INDEX} (set by a Kubernetes Indexed Job); "
                          f"this run has {total} (fold, model) units: pass --fold and --model instead")
    try:
        i = int(index)
    except ValueError:
        raise ConfigError(f"{COMPLETION_INDEX}={index!r} is not an integer") from None
    if not 0 <= i < total:
        raise ConfigError(f"{COMPLETION_INDEX}={i} is out of range: {len(folds)} fold(s) x "
                          f"{len(config.train.models)} model(s) give indexes 0..{total - 1} (the Job's completions)")
    return Unit(folds[i % len(folds)], config.train.models[i // len(folds)])


def is_finished(out: Store, unit: Unit) -> bool:
    return out.exists(unit.key(RESULT))


# ---------------------------------------------------------------- one fold's data


@dataclass
class FoldData:
    """One fold's images: originals of both parts, and the (augmented) training tensors."""

    part: Split
    train_set: dataset.ImageSet
    val_set: dataset.ImageSet
    tensors: train.TrainData
    train_sources: list[str]  # the original image behind each training row, augmented copies included


def prepare_fold(images: dataset.ImageSet, part: Split, config: Config) -> FoldData:
    """Subset the images; the training part alone feeds augmentation (paper mode: the 6x set
    drawn batch by batch from the training originals, ``augmentation.PaperSet``)."""
    train_set, val_set = images.subset(part.train), images.subset(part.val)
    drawn_from = None
    if config.augmentation.mode == "paper":
        drawn_from = augmentation.PaperSet(train_set.images, train_set.labels, config.augmentation, config.train.seed)
    tensors = train.TrainData(train_set.images, train_set.labels, val_set.images, val_set.labels, drawn_from)
    return FoldData(part, train_set, val_set, tensors, list(train_set.keys))


# ---------------------------------------------------------------- one unit


def train_unit(unit: Unit, fold: FoldData, config: Config, out: Store, **kwargs) -> dict | None:
    """``_train_unit`` while this process holds the unit's lease (``training/lease.py``; under
    torchrun rank 0 holds it for the group); a unit another process finished meanwhile is not
    trained again."""
    world = kwargs.get("world", distributed.SINGLE)
    with lease.hold(out, unit.key(lease.LEASE), config.output.lease_ttl_s, unit.name(), enabled=world.is_main):
        if not world.distributed and is_finished(out, unit):
            log.info("%s: finished by another process meanwhile; reusing %s", unit.name(), out.uri_of(unit.key(RESULT)))
            return json.loads(out.read(unit.key(RESULT)))
        return _train_unit(unit, fold, config, out, **kwargs)


def _train_unit(unit: Unit, fold: FoldData, config: Config, out: Store, *, init_weights: str | None, preprocess,
                observer, scratch: str, timed, guard, fit, environment: dict,
                world: distributed.World = distributed.SINGLE) -> dict | None:
    """Train (every rank), then evaluate and store one (fold, model) (rank 0; the others
    return None); ``result.json`` is written last.

    ``fit(name, state, train_cfg, save_checkpoint, after_epoch)`` trains (the caller times it);
    ``timed(stage, model)`` times the other stages; ``guard(stage)`` turns running out of
    device memory into the device exit code."""
    store, name, data = unit.store(out), unit.model, fold.tensors
    train_cfg = replace(config, train={"learning_rate": distributed.learning_rate(
        config.train.learning_rate, world, config.distributed.scale_batch)}).train
    state = train.new_state(name, train_cfg, data.train_images.device, init_weights)
    state.provenance = {"split": fold.part.to_dict(), "augmentation_mode": config.augmentation.mode,
                        "augmentation_seed": config.train.seed}
    checkpoint.load_latest(store, name, state, scratch)
    observer.model_started(name, config.train.epochs)
    if state.resumed_from_epoch is not None:
        observer.epoch.labels(model=name).set(state.epoch)
    after_epoch = None
    if not world.distributed:  # DDP steps eager: a compiled twin of the bare model would skip its gradient sync
        cache_store = open_store(config.output.uri, config.storage) if config.train.compile_cache else None
        after_epoch = compiling.attach(state, name, config.train.compile, config.train.batch_size,
                                       config.data.image_size, data.train_images.device, cache_store)
    if not world.is_main:  # trains in step with rank 0, which alone checkpoints, evaluates and writes
        with guard(f"{name} training"):
            fit(name, state, train_cfg, None, after_epoch)
        return None
    with checkpoint.CheckpointWriter(store, name, scratch) as writer:
        with guard(f"{name} training"):
            fit(name, state, train_cfg, writer.save, after_epoch)
        with timed("upload", name):
            if state.resumed_from_epoch != state.epoch:
                writer.save(state)
            pointer = writer.wait() or checkpoint.read_pointer(store, name)
            weights = checkpoint.save_weights(store, name, state.model, scratch)
    with timed("evaluate", name), guard(f"{name} evaluation"):
        scored = evaluate.predict(state.model, data.val_images, data.val_labels, config.train.batch_size, preprocess)
        on_train = evaluate.predict(state.model, fold.train_set.images, fold.train_set.labels,
                                    config.train.batch_size, preprocess)
    names = (config.data.positive_class, config.data.negative_class)
    rows = predictions.rows(fold.val_set.keys, fold.val_set.patient_ids, data.val_labels.cpu().numpy(), names,
                            unit.fold, name, scored.probabilities.float().cpu().numpy(),
                            scored.margins.double().cpu().numpy())
    predictions.write(out, rows, unit.key(predictions.FILENAME))
    result = {
        "fold": unit.fold, "model": name, "history": state.history, "checkpoint": weights,
        "resumable_checkpoint": {"uri": store.uri_of(pointer["key"]), "sha256": pointer["sha256"],
                                 "bytes": pointer["bytes"], "epoch": pointer["epoch"]},
        "resumed_from_epoch": state.resumed_from_epoch,
        # Youden's threshold on this fold's own (unaugmented) training images: never tuned on validation.
        "youden_threshold": evaluate.youden_threshold(fold.train_set.labels, on_train.probabilities),
        "counts": {"train": fold.train_set.counts(names), "val": fold.val_set.counts(names),
                   "train_augmented": dataset.class_counts(data.train_set.labels, names)},
        "environment": environment,
    }
    if config.explain.enabled:
        with timed("explain", name), guard(f"{name} Grad-CAM"):
            result["explain"] = _explain(unit, state.model, data, scored.probabilities, preprocess, config, out,
                                         scratch)
    result["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out.write_bytes(unit.key(RESULT), json.dumps(result).encode())
    return result


def _explain(unit: Unit, model, data: train.TrainData, probabilities, preprocess, config: Config, out: Store,
             scratch: str) -> dict:
    """Grad-CAM gallery of the unit's validation images (uploaded as ``<prefix>gradcam-<model>.png``)
    and its sanity check."""
    return out.upload_drawn(gradcam_key(unit), lambda path: explain.explain(
        unit.model, model, data.val_images, data.val_labels, probabilities, preprocess, config.train.batch_size,
        (config.data.positive_class, config.data.negative_class), config.explain.max_misclassified,
        config.explain.correct_per_class, config.train.seed, path), scratch)


def gradcam_key(unit: Unit) -> str:
    return f"{unit.prefix}gradcam-{unit.model}.png"


# ---------------------------------------------------------------- aggregation


@dataclass
class Pooled:
    """One model's predictions over every finished unit, in a fixed order."""

    keys: list[str]
    labels: np.ndarray
    probabilities: np.ndarray
    scores: np.ndarray
    youden: np.ndarray  # the threshold of the fold each image was validated in


def _pool(rows_by_unit: dict[Unit, list], results: dict[Unit, dict], positive: str) -> Pooled:
    rows = [(r, results[u]["youden_threshold"]) for u in rows_by_unit for r in rows_by_unit[u]]
    rows.sort(key=lambda pair: pair[0].key)
    return Pooled([r.key for r, _ in rows], np.array([r.label == positive for r, _ in rows], int),
                  np.array([r.probability for r, _ in rows]), np.array([r.score for r, _ in rows]),
                  np.array([t for _, t in rows]))


def _thresholds(pooled: Pooled, primary: dict, config: Config, kfold: bool) -> dict:
    cm = evaluate.confusion(pooled.labels, pooled.probabilities >= pooled.youden, 0.5)
    level, method = config.evaluate.confidence_level, config.evaluate.ci_method
    chosen_on = "each fold's training part" if kfold else "the training images"
    return {
        "primary": {"value": 0.5, "pre_specified": True, "confusion_matrix": primary["confusion_matrix"],
                    "metrics": primary["metrics"]},
        "youden": {"exploratory": True, "chosen_on": f"Youden's J on {chosen_on} (unaugmented), never on validation",
                   "values": sorted({float(t) for t in pooled.youden}), "confusion_matrix": cm,
                   "metrics": stats.diagnostic_table(cm["tp"], cm["fp"], cm["tn"], cm["fn"], method, level)},
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
                                         scores=pooled.scores)
    section["calibration"] = calibration.calibration(pooled.labels, pooled.probabilities, pooled.scores)
    section["thresholds"] = _thresholds(pooled, section, config, kfold)
    if kfold:
        section["folds"] = [_fold_row(u, rows_by_unit[u], results[u], config) for u in model_units]
        section["across_folds"] = _across(section["folds"])
    else:
        result = results[model_units[0]]
        section.update({k: result[k] for k in ("history", "checkpoint", "resumable_checkpoint", "resumed_from_epoch")})
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
    return compare.compare((names[0], names[1]), first.labels, (first.scores, second.scores), correct,
                           config.evaluate.confidence_level, config.train.seed)


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
    kfold = config.split.method == split.KFOLD
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
    _plots(out, models, pooled, results, scratch)
    artifacts = {}
    all_rows = [r for u in expected if u in rows for r in rows[u]]
    predictions.write(out, all_rows)
    first = next(u for u in expected if u in results)
    figures = {name: key for name, key in _figure_keys(expected, results, first).items() if out.exists(key)}
    artifacts.update({name: out.uri_of(key) for name, key in figures.items()})
    artifacts.update({"config": out.uri_of("config.yaml"), "split": out.uri_of("split.json"),
                      "predictions": out.uri_of(predictions.FILENAME), "report_markdown": out.uri_of("report.md"),
                      "report_html": out.uri_of("report.html"), "checklist": out.uri_of("checklist.md")})
    if not kfold:
        artifacts.update({f"model_card_{name}": out.uri_of(f"{name}/{model_card.CARD}") for name in models})
    final = report.build(
        run_id, config.to_dict(), dataset_section, models, config.evaluate.selection_metric, artifacts,
        environment=results[first]["environment"], created=max(r["finished"] for r in results.values()),
        evaluation=evaluation, comparison=_comparison(list(models), pooled, config),
        status="partial" if missing else "complete")
    return final, lambda: _write_documents(out, final, figures, kfold)


def _figure_keys(expected: list[Unit], results: dict, first: Unit) -> dict[str, str]:
    """Figure name (as report_html places it) -> stored key: the run's plots, Fig 2 of the first
    finished fold, and each finished unit's Grad-CAM gallery."""
    figures = {"training_curves": "training_curves.png", "roc": "roc.png", "reliability_diagram": "reliability.png",
               "augmentation_examples": f"{first.prefix}augmentation_examples.png"}
    for unit in expected:
        if unit in results and "explain" in results[unit]:
            name = f"gradcam_{unit.model}" if unit.fold is None else f"gradcam_{unit.model}_fold{unit.fold}"
            figures[name] = gradcam_key(unit)
    return figures


def _write_documents(out: Store, final: dict, figures: dict[str, str], kfold: bool) -> None:
    """Model cards (hold-out: one per stored model), report.md, report.html and checklist.md;
    report.json follows (``publish``): its presence marks the run complete."""
    if not kfold:  # a k-fold run stores k models per architecture, none of them "the" model to card
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
