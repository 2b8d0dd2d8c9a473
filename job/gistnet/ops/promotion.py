"""The champion/challenger gate: does a finished run's chosen model replace the production model?

Both models are scored (``serving.predict``, each with its own run's preprocessing) on the same
locked set, ``promotion.data``, used for nothing else. The set is first checked against the
challenger's development images (training and validation) by the content hash of the decoded
pixels (``data/fingerprint.py``); any overlap refuses. The challenger is promoted when

- its ROC AUC is non-inferior to the champion's: one-sided DeLong test of
  H0: AUC(challenger) - AUC(champion) <= -``promotion.auc_margin`` rejected at ``promotion.alpha``
  on the logit margins (``score`` in predictions.json: saturated probabilities would tie), with
  DeLong's covariance from ``evidence/compare.py``: Obuchowski's clustered one when a patient of
  the set has several images, else images independent (the record's ``method`` says which);
- and its mean calibration difference on the set, |mean predicted P(positive) - observed prevalence|,
  is within ``promotion.max_calibration_shift`` (not the reports' calibration-in-the-large, which is
  the logistic intercept with the slope fixed at 1: ``evidence/calibration.py``).

With no production model yet, a challenger whose evaluation on the set is complete (every
interval defined) is promoted, and the pointer says it had no champion to beat.

The champion is first checked as ``--run production`` checks it (``trained.open_production``: its
run's weights must still be the sha256 the pointer promoted, else exit 9). Every decision is
written next to the run as ``promotion/<registry id>/promotion.json`` (the evidence the pointer
cites, kept per registry) and copied to ``promotion.json`` (the run's latest decision, any
registry); a refusal is ``PromotionRefused`` (exit 11) with a one-line reason. Promoting writes
the evidence first, moves the registry's own MLflow alias ``champion-<registry id>``
(``observe/registry.py``, taken off the previous champion) when tracking is on, and switches
``<registry>/production.json`` last, with a conditional write on the pointer that was read (two
promotions never interleave).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from datetime import datetime, timezone

import numpy as np
from scipy.stats import norm

from gistnet.config import Config, replace
from gistnet.data import dataset, fingerprint, split as split_mod
from gistnet.data.lineage import Lineage
from gistnet.data.storage import Store, open_store, redact
from gistnet.errors import DataError, GistnetError, PreconditionFailed, PromotionRefused, StorageError
from gistnet.evidence import compare
from gistnet.observe.registry import registry_id
from gistnet.serving import predict, trained

log = logging.getLogger(__name__)

RECORD = "promotion.json"  # the run's latest decision; each registry's is promotion/<registry id>/promotion.json
REQUIRED_METRICS = ("sensitivity", "specificity", "accuracy")  # with roc_auc: what a complete evaluation defines
REFUSALS = "refusals.json"  # <registry>/refusals.json: consecutive refusals since the last promotion


def non_inferiority(challenger, champion, labels, margin: float, clusters=None) -> dict:
    """One-sided DeLong test that AUC(challenger) > AUC(champion) - margin, on the same images.
    With ``clusters`` (patient ids) in which a patient has several images, the covariance is
    Obuchowski's clustered DeLong (``compare.auc_covariance``, as ``delong_test`` uses); else
    DeLong's with the images independent. ``method`` says which."""
    scores = np.vstack([np.asarray(challenger, float), np.asarray(champion, float)])
    aucs, cov, kind = compare.auc_covariance(scores, labels, clusters)
    method = ("one-sided DeLong, images independent" if kind == "delong"
              else f"one-sided DeLong, clustered by patient ({kind}: Obuchowski's clustered covariance)")
    difference = float(aucs[0] - aucs[1])
    variance = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if variance > 1e-15:
        z = (difference + margin) / math.sqrt(variance)
        p = float(norm.sf(z))
    else:  # no variance (e.g. both separate the classes): the difference itself decides
        z, p = None, 0.0 if difference + margin > 0 else 1.0
    return {"method": method, "auc_challenger": float(aucs[0]), "auc_champion": float(aucs[1]),
            "difference": difference, "margin": margin, "z": z, "p": p,
            "se": math.sqrt(max(variance, 0.0))}


def record_key(registry_uri: str) -> str:
    """Where a run keeps the decision of one registry: ``promotion/<registry id>/promotion.json``."""
    return f"promotion/{registry_id(registry_uri)}/{RECORD}"


def _write_record(run: Store, record: dict) -> None:
    data = json.dumps(record, indent=1).encode()
    run.write_bytes(record_key(record["registry"]), data)
    run.write_bytes(RECORD, data)


def mean_calibration_difference(labels, probabilities) -> float:
    """Mean predicted probability minus the observed prevalence (0: as many positives predicted as occur;
    above 0: over-predicts), on the probability scale."""
    return float(np.mean(np.asarray(probabilities, float)) - np.mean(np.asarray(labels, float)))


# ------------------------------------------------------------------ the promotion set


def _scan_set(data: Store, cfg, size: int) -> tuple[dict[str, str], Lineage]:
    """Pixel digest of each image of the promotion set, decoded as the challenger's training decoded
    its images (its size and ``data.roi``, the manifest's frame and roi), and the set's lineage."""
    import hashlib

    labeled, unsafe = dataset.list_labeled(data, cfg)
    digests, lineage = {}, Lineage(skipped=[u["uri"] for u in unsafe])
    for item in labeled:
        raw = data.read(item.key)
        try:
            pixels = dataset.decode_item(raw, size, cfg.max_image_pixels, cfg.roi, item.frame, item.roi,
                                         data.uri_of(item.key)).pixels
            digests[item.key] = fingerprint.pixel_digest(pixels)
        except ValueError:
            lineage.skipped.append(item.key)
            continue
        lineage.add(item, len(raw), hashlib.sha256(raw).hexdigest())
    return digests, lineage


def _development_digests(model: trained.TrainedModel, config: Config) -> dict[str, str]:
    """digest -> key of the challenger's training and validation images: its ``fingerprints.json``,
    or, for a run without one, computed from its split and data."""
    try:
        return fingerprint.read_fingerprints(model.run)
    except FileNotFoundError:
        pass
    plan = split_mod.Plan.from_dict(json.loads(model.run.read("split.json")))
    data = open_store(model.config.data.uri, config.storage, model.config.data.download_threads)
    out = {}
    for key in sorted(plan.keys()):
        pixels = dataset.decode_pixels(data.read(key), model.image_size, model.config.data.max_image_pixels,
                                       model.config.data.roi)
        out[fingerprint.pixel_digest(pixels)] = key
    return out


def _score(model_run: str, model: str, data_uri: str, out: Store, where: str, config: Config, scratch: str) -> dict:
    """Score the promotion set with one model; its predictions.json goes under ``out/promotion/<where>``."""
    request = predict.Request(run=model_run, data=data_uri, output=out.uri_of(f"promotion/{where}"), model=model,
                              device=config.train.device)
    quiet = replace(config, metrics={"pushgateway": "", "port": 0})  # the gate pushes its own decision
    predict.run(request, quiet, scratch)
    return json.loads(out.read(f"promotion/{where}/predictions.json"))


def _endpoint_words(data) -> str:
    """What the gate compares: the endpoint AUC, with K classes positive against every other class."""
    if len(data.classes) == 2:
        return f"ROC AUC of P({data.positive_class}) against {data.negative_class}"
    return (f"ROC AUC of the endpoint, P({data.positive_class}) (its softmax mass) against every other class "
            f"({', '.join(c for c in data.classes if c != data.positive_class)}); the {len(data.classes)}-class "
            "call is not gated")


def _arrays(document: dict) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """keys, labels (1: positive), P(positive), logit margins (the ranking score) and patient ids."""
    rows = document["predictions"]
    positive = document["positive_class"]
    return ([r["key"] for r in rows], np.array([r["label"] == positive for r in rows], dtype=int),
            np.array([r["probability"] for r in rows], dtype=float), np.array([r["score"] for r in rows], dtype=float),
            [r["patient_id"] for r in rows])


def paired_test(mine: dict, theirs: dict, margin: float, where: str) -> dict:
    """``non_inferiority`` of the challenger's predictions.json (``mine``) against the champion's on
    the same images of ``where``: ranked on the logit margins, as the evaluations' ROC AUC is (float32
    probabilities saturate at 0 and 1 and tie), clustered by the set's patient ids."""
    keys, labels, _, scores, patients = _arrays(mine)
    keys_old, labels_old, _, scores_old, _ = _arrays(theirs)
    if keys_old != keys or not np.array_equal(labels_old, labels):
        raise DataError(f"champion and challenger scored different images of {where} "
                        f"({len(keys_old)} vs {len(keys)}): the two runs decode the set differently")
    return non_inferiority(scores, scores_old, labels, margin, patients)


def _complete(document: dict) -> str | None:
    """Why an evaluation on the promotion set is not complete (None: it is): ROC AUC, sensitivity,
    specificity and accuracy each need a value and an interval (both classes scored). PPV and NPV
    are left out: they are undefined whenever a model makes no call of one class, a property of
    the model the AUC test judges, not a gap in the set."""
    evaluation = document.get("evaluation")
    if not evaluation:
        return "the promotion set has no labels"
    named = {"roc_auc": evaluation["roc_auc"], **{k: evaluation["metrics"][k] for k in REQUIRED_METRICS}}
    undefined = [n for n, m in named.items() if m.get("value") is None or m.get("ci_low") is None]
    return f"intervals undefined on the promotion set: {', '.join(undefined)}" if undefined else None


# ------------------------------------------------------------------ the gate


def promote(run_uri: str, registry_uri: str, config: Config, scratch: str | None = None) -> dict:
    """Decide, record (``promotion.json`` next to the run) and, when promoted, move the pointer."""
    scratch = scratch or tempfile.gettempdir()
    pc = config.promotion
    if not pc.data:
        from gistnet.errors import ConfigError

        raise ConfigError("promotion.data is not set: the locked, labelled set both models are scored on")
    registry = open_store(registry_uri, config.storage)
    pointer, etag = trained.read_pointer(registry)  # an unreachable bucket: exit 5; a malformed pointer: exit 9
    if pointer is not None:  # the champion is what was promoted, as --run production checks it: else exit 9
        trained.open_production(registry, pointer, config.storage)
    challenger = trained.open_run(run_uri, "best", config.storage)
    run = challenger.run
    record = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run_id": challenger.run_id,
              "run_uri": run.uri, "model": challenger.name, "sha256": challenger.sha256, "registry": registry.uri,
              "promotion_data": redact(pc.data), "champion": pointer,
              "data_digest": challenger.report.get("dataset", {}).get("lineage", {}).get("digest"),
              "criteria": {"auc_margin": pc.auc_margin, "alpha": pc.alpha,
                           "max_calibration_shift": pc.max_calibration_shift,
                           "endpoint": _endpoint_words(challenger.config.data)}}

    data = open_store(pc.data, config.storage, challenger.config.data.download_threads)
    set_digests, set_lineage = _scan_set(data, challenger.config.data, challenger.image_size)
    record["promotion_data_digest"] = set_lineage.digest()
    development = _development_digests(challenger, config)
    overlap = sorted(k for k, d in set_digests.items() if d in development)
    record["overlap"] = {"count": len(overlap), "keys": overlap[:20], "method": fingerprint.METHOD}
    if overlap:
        return _refuse(record, run, registry, config,
                       f"the promotion set {redact(pc.data)} shares {len(overlap)} images with the challenger's "
                       f"development data (first: {overlap[0]}); it must be a locked set used for nothing else")

    mine = _score(run.uri, challenger.name, pc.data, run, f"{registry_id(registry.uri)}/challenger", config, scratch)
    keys, labels, p_new, _, _ = _arrays(mine)
    citl = mean_calibration_difference(labels, p_new)
    record["challenger"] = {"evaluation": mine["evaluation"], "mean_calibration_difference": citl,
                            "n_images": len(keys)}
    incomplete = _complete(mine)
    if incomplete:
        return _refuse(record, run, registry, config, f"challenger {challenger.name}: {incomplete}")
    if pointer is None:
        record["decision"] = "promoted"
        record["reason"] = "no champion to beat: first production model (its evaluation on the promotion set is complete)"
        return _promote(record, challenger, run, registry, None, config)

    theirs = _score(pointer["run_uri"], pointer["model"], pc.data, run, f"{registry_id(registry.uri)}/champion",
                    config, scratch)
    test = paired_test(mine, theirs, pc.auc_margin, redact(pc.data))
    record["non_inferiority"] = test
    record["champion_evaluation"] = theirs["evaluation"]
    if not test["p"] < pc.alpha:
        return _refuse(record, run, registry, config,
                       f"challenger AUC {test['auc_challenger']:.3f} vs champion {test['auc_champion']:.3f} "
                       f"(difference {test['difference']:+.3f}): not non-inferior within margin {pc.auc_margin:g} "
                       f"(one-sided DeLong p = {test['p']:.3g} >= {pc.alpha:g})")
    if abs(citl) > pc.max_calibration_shift:
        return _refuse(record, run, registry, config,
                       f"challenger mean calibration difference (mean P - prevalence) {citl:+.3f} on the promotion "
                       "set exceeds "
                       f"promotion.max_calibration_shift={pc.max_calibration_shift:g}")
    record["decision"] = "promoted"
    record["reason"] = (f"non-inferior: AUC {test['auc_challenger']:.3f} vs {test['auc_champion']:.3f} "
                        f"(one-sided DeLong p = {test['p']:.3g} < {pc.alpha:g}, margin {pc.auc_margin:g}); "
                        f"mean calibration difference (mean P - prevalence) {citl:+.3f}")
    return _promote(record, challenger, run, registry, etag, config)


def _promote(record: dict, challenger: trained.TrainedModel, run: Store, registry: Store, etag: str | None,
             config: Config) -> dict:
    """Evidence first, pointer last: ``promotion.json`` (``pointer_switched: false``) and refusals.json
    are written, MLflow's alias is moved, and only then is ``production.json`` switched. A failure
    before the switch (MLflow down with ``tracking.required``, a lost conditional write) leaves
    production unchanged, is recorded in ``promotion.json`` (``error``) and raised; a re-run of the
    run decides again (``decided``)."""
    pointer = {"run_uri": run.uri, "model": challenger.name, "sha256": challenger.sha256,
               "run_id": challenger.run_id, "model_uri": run.uri_of(challenger.key(trained.WEIGHTS)),
               "promoted": record["time"], "no_champion": record["champion"] is None,
               "data_digest": record["data_digest"], "promotion_data_digest": record["promotion_data_digest"],
               "evidence": run.uri_of(record_key(registry.uri)), "reason": record["reason"]}
    record["pointer"], record["pointer_switched"], record["consecutive_refusals"] = pointer, False, 0
    _write_record(run, record)
    registry.write_bytes(REFUSALS, json.dumps({"consecutive": 0, "last_promoted": challenger.run_id}).encode())
    try:
        record["mlflow"] = _move_alias(challenger, registry.uri, config)  # tracking.required and MLflow down: TrackingError
        registry.write_bytes_if(trained.POINTER, json.dumps(pointer, indent=1).encode(),
                                if_none_match=etag is None, if_match=etag)
    except GistnetError as exc:
        if isinstance(exc, PreconditionFailed):
            exc = StorageError(f"{registry.uri_of(trained.POINTER)} changed while this promotion was decided "
                               "(another promotion ran); run gistnet promote again")
        record["error"] = f"{exc.kind}: {exc}; production.json was not switched"
        _write_record(run, record)
        raise exc from None
    record["pointer_switched"] = True
    _write_record(run, record)
    log.info("promoted %s of run %s: %s", challenger.name, challenger.run_id, record["reason"])
    return record


def decided(run: Store, registry_uri: str, config: Config) -> bool:
    """Whether the gate decided for this run and registry: ``promotion.json`` refused it, or
    promoted it and switched the pointer (a record from before ``pointer_switched`` existed was
    only written after the switch). False: no record, another registry's, or a promotion that
    failed before the switch (the pipeline runs the gate again on a re-run)."""
    record = None
    for key in (record_key(registry_uri), RECORD):  # this registry's decision; a run from before it had one
        try:
            record = json.loads(run.read(key))
            break
        except FileNotFoundError:
            continue
        except ValueError:
            return False
    if record is None:
        return False
    if record.get("registry") != open_store(registry_uri, config.storage).uri:
        return False
    return record.get("decision") == "refused" or (
        record.get("decision") == "promoted" and record.get("pointer_switched", True))


def _refuse(record: dict, run: Store, registry: Store, config: Config, reason: str) -> dict:
    record["decision"], record["reason"] = "refused", reason
    try:
        previous = json.loads(registry.read(REFUSALS)).get("consecutive", 0)
    except (FileNotFoundError, ValueError):
        previous = 0
    record["consecutive_refusals"] = previous + 1
    registry.write_bytes(REFUSALS, json.dumps({"consecutive": previous + 1, "last_refused": record["run_id"]}).encode())
    _write_record(run, record)
    raise PromotionRefused(reason, record)


def _move_alias(challenger: trained.TrainedModel, registry_uri: str, config: Config) -> dict | None:
    """Point the registry's champion alias at the challenger's registered version, off the previous
    champion (tracking on); called before ``production.json`` is switched, so a required tracking
    server that fails stops the switch."""
    from gistnet.observe import registry as mlflow_registry
    from gistnet.observe.tracking import tracking_uri

    uri = tracking_uri(config.tracking)
    registered = ((challenger.report.get("tracking") or {}).get("models") or {}).get(challenger.name)
    if not uri or not registered:
        return None
    moved = {"registered_model": registered["name"], "version": registered["version"],
             "alias": mlflow_registry.champion_alias(registry_uri)}
    try:
        moved = mlflow_registry.move_champion(uri, registry_uri, registered["name"], registered["version"])
    except Exception as exc:  # noqa: BLE001 - the pointer is the source of truth; the alias follows it
        log.warning("MLflow's champion alias was not moved (production.json is the source of truth): %s", redact(type(exc).__name__))
        moved["error"] = redact(f"{type(exc).__name__}: {exc}")[:300]
        if config.tracking.required:
            from gistnet.errors import TrackingError

            raise TrackingError(f"tracking.required is true and MLflow's champion alias could not be moved, so "
                                f"production was not switched: {moved['error']}") from None
    return moved


def gate(run_uri: str, registry_uri: str, config: Config, scratch: str | None = None) -> dict:
    """``promote`` and push its decision (``gistnet_promotion_decision``) whatever it was."""
    from gistnet.observe.metrics import push_promotion

    m = config.metrics
    try:
        record = promote(run_uri, registry_uri, config, scratch)
    except PromotionRefused as exc:
        _log_decision(exc.record, config)
        push_promotion(m.pushgateway, m.job_name, m.grouping_labels, False,
                       (exc.record or {}).get("consecutive_refusals", 0))
        raise
    _log_decision(record, config)
    push_promotion(m.pushgateway, m.job_name, m.grouping_labels, True, 0)
    return record


def _log_decision(record: dict | None, config: Config) -> None:
    """The decision as an MLflow run nested under the challenger's (tracking on and the run tracked;
    ``observe/registry.py``). After the decision, so a failure is a warning that changes no exit code:
    promotion.json and production.json are the record."""
    from gistnet.observe import registry as mlflow_registry
    from gistnet.observe.tracking import tracking_uri

    uri = tracking_uri(config.tracking)
    if not uri or not record:
        return
    try:
        report = json.loads(open_store(record["run_uri"], config.storage).read("report.json"))
        parent = (report.get("tracking") or {}).get("mlflow_run_id")
        if parent:
            mlflow_registry.log_decision(uri, parent, record)
        else:
            log.warning("MLflow tracking is on but run %s was not tracked: its promotion decision is not logged",
                        record["run_uri"])
    except Exception as exc:  # noqa: BLE001 - any client/server failure
        log.warning("the promotion decision (%s) was not logged to MLflow at %s: %s", record.get("decision"),
                    redact(uri), redact(f"{type(exc).__name__}: {exc}")[:300])
