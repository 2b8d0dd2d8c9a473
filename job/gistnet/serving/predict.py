"""``gistnet predict``: score every image under a data URI with a finished run's model.

storage -> dataset (the run's decoding and image size) -> trained.Scorer or ONNX Runtime
-> predictions.csv, predictions.json -> storage.

A k-fold (or leave-one-site-out) run's model is its K fold networks as an ensemble
(``ensemble.EnsembleScorer``, as ``gistnet evaluate`` scores it): the score is the mean of their
logit margins and the probability its sigmoid (the softmax of the mean logits), every fold's
weights checked against the report; the call uses the run's pre-specified threshold (0.5)
unless ``--threshold`` says otherwise, and predictions.json names the folds' median Youden
threshold as the exploratory one.

The preprocessing is the run's own: its saved ``config.yaml`` gives the image size and
class names, ``dataset`` lists and decodes exactly as training did, and the scorer applies
``train.Preprocess``. Images are handled in chunks, so a large archive never sits in memory
at once. Everything is checked (run, model, weights sha256, ONNX file, data prefix) before
anything is written; ``predictions.json`` is written last and marks the output complete.

Images that are the run's own training or validation images (``development``: matched by
pixel content against the run's ``fingerprints.json``) are scored and marked, but left out of
the metrics; ``--include-development`` reports them apart, marked as not an evaluation.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch

import gistnet
from gistnet.data import dataset, fingerprint, privacy
from gistnet.data.overlap import check_apart
from gistnet.evidence import evaluate, kclasses
from gistnet.evidence import predictions as predictions_mod
from gistnet.training import train
from gistnet.serving import development
from gistnet.serving import trained as trained_mod
from gistnet.config import Config
from gistnet.errors import DataError
from gistnet.observe.metrics import PredictMetrics, pushed_job
from gistnet.data.storage import Store, TransferStats, open_store, redact

log = logging.getLogger(__name__)

CHUNK = 256  # images downloaded, decoded and scored at a time
# The run's own predictions.csv columns (gistnet.evidence.predictions), then the call and the model's identity.
# Last, the run's key of the development image an image equals (empty: not one of them).
# Then the threshold the call used and how the model scores (a single model or a fold ensemble).
CSV_COLUMNS = ("key", "patient_id", "label", "probability", "score", "call", "model", "weights_sha256", "run_id",
               "development_key", "threshold", "scoring")


@dataclass(frozen=True)
class Request:
    run: str
    data: str
    output: str
    model: str = "best"
    batch_size: int | None = None  # None: the run's train.batch_size
    device: str = "auto"
    threshold: float | None = None  # None: the run's pre-specified threshold (0.5)
    engine: str = "torch"
    include_development: bool = False  # also report metrics on the run's own images, marked as not an evaluation


@dataclass
class Scored:
    keys: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    patient_ids: list[str] = field(default_factory=list)
    probabilities: list[torch.Tensor] = field(default_factory=list)
    margins: list[torch.Tensor] = field(default_factory=list)  # logit positive - negative: the ranking score
    logits: list[torch.Tensor] = field(default_factory=list)  # N x K, head order: the p_<class> columns
    lesion_ids: list[str] = field(default_factory=list)  # the manifest's lesion_id ("" where none)
    digests: list[str] = field(default_factory=list)  # fingerprint.pixel_digest, aligned with keys
    unusable: list[dict] = field(default_factory=list)


def run(request: Request, cfg: Config, scratch: str | None = None) -> dict:
    """Score, write the outputs, push the outcome to the Pushgateway whatever happens."""
    return pushed_job(cfg.metrics, "predict", lambda metrics, stats: _predict(request, cfg, metrics, stats,
                                                                   scratch or tempfile.gettempdir()))


def _predict(request: Request, cfg: Config, metrics: PredictMetrics, stats: TransferStats, scratch: str) -> dict:
    check_apart(request.data, request.output, "--data", "--output")  # before anything is written
    model = trained_mod.open_run(request.run, request.model, cfg.storage)
    device = train.resolve_device(request.device)
    metrics.run_started(model.run_id, device.type)
    data_cfg = model.config.data  # the run's class names, image size, manifest name, pixel limit
    data = open_store(request.data, cfg.storage, data_cfg.download_threads, stats)
    out = open_store(request.output, cfg.storage, stats=stats)
    pseudo = privacy.for_run(model.run, data_cfg.pseudonymize_keys)  # the run's key: the run's pseudonyms
    with privacy.kept_on_failure(pseudo, out):  # data.pseudonymize_keys: an error names keys by their pseudonyms
        return _predict_data(request, model, data, out, pseudo, device, metrics, scratch)


def _predict_data(request: Request, model, data: Store, out: Store, pseudo, device, metrics: PredictMetrics,
                  scratch: str) -> dict:
    data_cfg = model.config.data
    items, unsafe, labeled = dataset.list_for_scoring(data, data_cfg, pseudo)
    score = _scorer(model, request, device, scratch)
    threshold = model.threshold if request.threshold is None else request.threshold
    batch_size = request.batch_size or model.config.train.batch_size
    log.info("scoring %d objects under %s with %s %s (%s) of run %s (%s, threshold %g, %s labels)", len(items),
             redact(data.uri), request.engine, model.name, model.scoring.scoring, model.run_id, device, threshold,
             "with" if labeled else "without")

    scored = Scored(unusable=list(unsafe))
    for start in range(0, len(items), CHUNK):
        _score_chunk(items[start:start + CHUNK], data, data_cfg, score, batch_size, scored, metrics, model.name,
                     pseudo, privacy.namer(data, pseudo, out))
        log.info("scored %d/%d images (%d unusable)", len(scored.keys), len(items), len(scored.unusable))
    scored.keys, scored.patient_ids = privacy.outputs(scored.keys, scored.patient_ids, scored.unusable, data, pseudo)
    if not scored.keys:
        first = scored.unusable[0]["reason"] if scored.unusable else "none listed"
        raise DataError(f"no usable images under {redact(data.uri)} ({len(scored.unusable)} unusable; first: {first})")
    for s in scored.unusable:
        log.warning("unusable %s: %s", s["uri"], s["reason"])

    probabilities = torch.cat(scored.probabilities).float().cpu()
    margins = torch.cat(scored.margins).double().cpu()
    overlap = development.find(model.run, scored.digests)
    if overlap.count:
        log.warning("%d of %d scored images are run %s's development images (training and validation, matched by "
                    "pixel content)%s", overlap.count, len(scored.keys), model.run_id,
                    ": excluded from the metrics" if labeled else "")
    evaluation = dev_evaluation = note = None
    if labeled:
        note = development.evaluation_note(overlap)
        unseen, seen = overlap.unseen(), overlap.development()
        evaluation = _evaluate(scored, probabilities, margins, model, threshold, unseen) if unseen else None
        if request.include_development and seen:
            dev_evaluation = {"note": development.NOT_AN_EVALUATION,
                              **_evaluate(scored, probabilities, margins, model, threshold, seen)}
    result = _document(request, model, data, scored, probabilities, margins, threshold, evaluation, device,
                       labeled)
    result["counts"]["development"] = overlap.count if overlap.checked else None
    result["development_data"] = development.section(overlap, labeled)
    result["evaluation_note"] = note
    if request.include_development:
        result["development_evaluation"] = dev_evaluation
    for row, match in zip(result["predictions"], overlap.matches):
        row["development_key"] = match
    result["predictions"].sort(key=lambda r: r["key"])
    if request.engine == "onnx":
        result["onnx_sha256"] = score.sha256  # the file scored, verified against its sidecar
    pseudo.save(out)  # a key made here (a run from before pseudonyms had none), under private/
    out.write_bytes("predictions.csv", _csv(result).encode())
    if any(scored.lesion_ids):  # one row per lesion beside the per-image table (issue 27)
        table = kclasses.lesion_table([r["key"] for r in result["predictions"]],
                                      [r["patient_id"] for r in result["predictions"]],
                                      [r.get("lesion_id", "") for r in result["predictions"]],
                                      [[r["class_probabilities"][c] for c in result["classes"]]
                                       for r in result["predictions"]],
                                      [r.get("label") for r in result["predictions"]] if labeled else None,
                                      tuple(result["classes"]))
        out.write_bytes(kclasses.LESIONS_FILE, kclasses.lesions_csv({model.name: table}))
    out.write_bytes("predictions.json", json.dumps(result, indent=1).encode())  # last: marks the output complete
    log.info("predictions: %s", out.uri_of("predictions.json"))
    return {"uri": out.uri_of("predictions.json"), "scored": len(scored.keys), "unusable": len(scored.unusable),
            "evaluation": evaluation, "model": model.name, "run_id": model.run_id,
            "development": result["counts"]["development"], "evaluation_note": note,
            "development_evaluation": dev_evaluation}


def _scorer(model: trained_mod.TrainedModel, request: Request, device: torch.device, scratch: str):
    """(P(positive), logit margin) for a uint8 batch: torch (every weights file checked against
    the report) or ONNX Runtime. A fold ensemble's margin is the mean of its members' margins
    (``EnsembleScorer``, as evaluate computes it) and its probability that mean's sigmoid."""
    if request.engine == "onnx":
        from gistnet.serving.export import OnnxScorer

        return OnnxScorer(model, scratch, request.device, threads=train.threads_hint())
    scorer = trained_mod.scorer(model, device, scratch)

    @torch.no_grad()
    def score(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = scorer.logits(images.to(device))  # a fold ensemble's: the mean of its members' logits
        return evaluate.Scores(*evaluate.endpoint_scores(logits), logits)  # two classes: softmax[:, 1], z1 - z0

    return score


def _score_chunk(items: list[dataset.Labeled], data: Store, data_cfg, score, batch_size: int, scored: Scored,
                 metrics: PredictMetrics, model_name: str, pseudo=None, where=None) -> None:
    started = time.perf_counter()
    raw = data.read_many([i.key for i in items], data_cfg.download_threads)
    metrics.stage("download", time.perf_counter() - started)
    started = time.perf_counter()
    kept, arrays, skipped = dataset.decode_all(raw, items, data_cfg.image_size, data_cfg.max_image_pixels,
                                               data_cfg.download_threads, dedupe=False, roi_mode=data_cfg.roi,
                                               where=where or data.uri_of, pseudo=pseudo)
    metrics.stage("decode", time.perf_counter() - started)
    unusable = [{"uri": data.uri_of(s["key"]), "reason": s["reason"]} for s in skipped]
    scored.unusable += unusable
    started = time.perf_counter()
    if kept:
        import numpy as np

        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        for begin in range(0, len(images), batch_size):
            scores = score(images[begin:begin + batch_size])
            probabilities, margins = scores
            scored.probabilities.append(probabilities.float().cpu())
            scored.margins.append(margins.double().cpu())
            scored.logits.append(scores.logits.float().cpu())
        scored.keys += [k.key for k in kept]
        scored.labels += [k.label for k in kept]
        scored.patient_ids += [k.patient_id for k in kept]
        scored.lesion_ids += [pseudo.lesion(k.lesion_id) if pseudo is not None else k.lesion_id for k in kept]
        scored.digests += [fingerprint.pixel_digest(a) for a in arrays]
    metrics.chunk_scored(model_name, len(kept), time.perf_counter() - started, len(unusable))


def _evaluate(scored: Scored, probabilities: torch.Tensor, margins: torch.Tensor, model: trained_mod.TrainedModel,
              threshold: float, rows: list[int]) -> dict:
    """The run's diagnostic table (same CI method and level) on the labeled images ``rows``: calls
    by the probability, ROC AUC ranked on the logit margins, intervals clustered by patient when
    the manifest gives a patient several images."""
    ev = model.config.evaluate
    classes = torch.tensor([scored.labels[i] for i in rows], dtype=torch.long)
    labels = evaluate.endpoint_labels(classes, len(model.config.data.head_classes))
    table = evaluate.diagnostic_report(labels, probabilities[rows], ev.ci_method, ev.confidence_level, threshold,
                                       scores=margins[rows], clusters=[scored.patient_ids[i] for i in rows])
    table["counts"] = dataset.class_counts(classes, model.config.data.head_classes)
    return table


def _document(request: Request, model: trained_mod.TrainedModel, data: Store, scored: Scored,
              probabilities: torch.Tensor, margins: torch.Tensor, threshold: float, evaluation: dict | None,
              device: torch.device, labeled: bool) -> dict:
    positive, negative = model.class_names
    head = model.config.data.head_classes
    scores = margins.numpy()
    k = len(model.scoring.members)
    per_class = (predictions_mod.class_probabilities(torch.cat(scored.logits).double().numpy()) if scored.logits
                 else [[] for _ in scored.keys])
    rows = []
    for i, key in enumerate(scored.keys):
        p = float(probabilities[i])
        row = {"key": key, "patient_id": scored.patient_ids[i], "probability": p, "score": float(scores[i]),
               "call": positive if p >= threshold else negative,
               "class_probabilities": {c: float(v) for c, v in zip(head, per_class[i])}}
        if scored.lesion_ids and scored.lesion_ids[i]:
            row["lesion_id"] = scored.lesion_ids[i]
        if labeled:
            row["label"] = head[scored.labels[i]]
        rows.append(row)
    return {
        "schema_version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "gistnet_version": gistnet.__version__,
        "run_id": model.run_id, "run_uri": model.run.uri, "model": model.name, "weights_sha256": model.sha256,
        "scoring": model.scoring.scoring, "weights": model.scoring.weights(),
        "engine": request.engine, "device": device.type, "data_uri": redact(data.uri),
        "positive_class": positive, "negative_class": negative, "classes": list(head),
        "class_probabilities": "P(class) for each class of the network's head (its order: the other classes, then "
                               "the positive class last); probability is that of the positive class, the endpoint",
        "probability": f"P({positive}) after the run's preprocessing ({model.image_size} px)" + (
            f": the sigmoid of the score (the softmax of the {k} fold models' mean logits)" if model.is_ensemble else ""),
        "score": ("the mean over the " + str(k) + " fold models of " if model.is_ensemble else "")
        + f"the logit margin logit({positive}) - logit({negative}): ranks the images (ROC AUC) where the probability "
          "saturates at 0 or 1",
        "threshold": threshold,
        "threshold_source": "--threshold" if request.threshold is not None else "the run's pre-specified threshold",
        "exploratory_threshold": {
            "value": model.scoring.youden, "used": False,
            "source": "the median of the folds' Youden thresholds (development run)" if model.is_ensemble
            else "the development run's Youden threshold"},
        "counts": {"scored": len(rows), "unusable": len(scored.unusable)},
        "unusable": scored.unusable,
        "evaluation": evaluation,
        "predictions": rows,
    }


def _csv(result: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    classes = result["classes"] if all(row["class_probabilities"] for row in result["predictions"]) else []
    lesions = any(row.get("lesion_id") for row in result["predictions"])
    writer.writerow(CSV_COLUMNS + tuple(f"p_{c}" for c in classes) + (("lesion_id",) if lesions else ()))
    for row in result["predictions"]:
        writer.writerow([row["key"], row["patient_id"], row.get("label", ""), repr(row["probability"]),
                         repr(row["score"]), row["call"], result["model"], result["weights_sha256"], result["run_id"],
                         row.get("development_key") or "", repr(result["threshold"]), result["scoring"],
                         *(repr(row["class_probabilities"][c]) for c in classes),
                         *((row.get("lesion_id", ""),) if lesions else ())])
    return buffer.getvalue()
