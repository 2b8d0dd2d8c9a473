"""``gistnet evaluate``: score a labelled data set from elsewhere (another hospital, scanner or
year) with a finished run's models, and write its report beside the run.

storage -> dataset (the run's decoding and image size) -> each model (a hold-out's network or
a k-fold run's fold ensemble, weights checked) -> the run's metrics and CI method, frozen
thresholds, calibration, paired comparison, side-by-side development vs external, overlap
with the development images (by pixel content), decision curve, subgroups, sites ->
``<run>/external/<name>/``: predictions.csv, report.md, report.html, report.json (last: it
marks the evaluation complete).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch

from gistnet import classes
from gistnet import config as config_mod
from gistnet.config import Config
from gistnet.data import dataset
from gistnet.data import fingerprint, privacy
from gistnet.data.overlap import check_apart
from gistnet.data.storage import Store, TransferStats, open_store, redact
from gistnet.errors import ConfigError, DataError, ModelError
from gistnet.evidence import calibration, clustered, compare, decision, evaluate, external_report, report as report_mod
from gistnet.evidence import kclasses, predictions, report_html, sections, subgroups
from gistnet.observe.metrics import PredictMetrics, pushed_job
from gistnet.serving import development, ensemble
from gistnet.training import train

log = logging.getLogger(__name__)

CHUNK = 256
CSV_COLUMNS = ("key", "patient_id", "site", "label", "model", "probability", "score", "in_development", "excluded")


@dataclass(frozen=True)
class Request:
    run: str
    data: str
    output: str | None = None  # default <run>/external/<name>
    name: str | None = None  # default: the last part of the data URI
    model: str = "all"  # all | best | resnet34 | resnet50
    batch_size: int | None = None
    device: str = "auto"
    evaluate: dict | None = None  # evaluate.* keys given at evaluate time (--config, environment): they win


# evaluate.* keys an evaluation takes from its own config when given there (how it slices its images);
# the others are the run's, so that development and external intervals compare (another value: refused)
EVALUATE_TIME = ("subgroups", "min_subgroup")


def evaluate_config(run_evaluate, given: dict | None):
    """The run's ``evaluate`` section with the evaluate-time ``given`` keys applied: ``subgroups`` and
    ``min_subgroup`` win; ``ci_method``, ``confidence_level`` and ``selection_metric`` other than the
    run's are a ConfigError (the development column and the model choice are the run's)."""
    given = dict(given or {})
    for key, value in given.items():
        if key not in EVALUATE_TIME and value != getattr(run_evaluate, key):
            raise ConfigError(f"evaluate.{key}={value!r} differs from the run's {getattr(run_evaluate, key)!r}: an "
                              f"external evaluation uses the run's evaluate.{key} so that its numbers compare with "
                              "the development ones; remove the key (evaluate-time keys: "
                              + ", ".join(f"evaluate.{k}" for k in EVALUATE_TIME) + ")")
    return dataclasses.replace(run_evaluate, **{k: v for k, v in given.items() if k in EVALUATE_TIME})


@dataclass
class Images:
    items: list
    pixels: list
    digests: list


def run(request: Request, cfg: Config, scratch: str | None = None) -> dict:
    """Evaluate, write the outputs, push the outcome to the Pushgateway whatever happens."""
    return pushed_job(cfg.metrics, "evaluate", lambda metrics, stats: evaluate_external(request, cfg, metrics, stats,
                                                                   scratch or tempfile.gettempdir()))


def _open(request: Request, cfg: Config) -> tuple[Store, dict, Config, list[str]]:
    run = open_store(request.run, cfg.storage)
    try:
        rep = json.loads(run.read("report.json"))
    except FileNotFoundError:
        if run.exists("config.yaml"):
            raise ModelError(f"run {run.uri} is not complete (no report.json yet): wait for it to finish or "
                             "resume it with the same --run-id") from None
        raise ModelError(f"no gistnet run at {run.uri} (neither report.json nor config.yaml found)") from None
    except ValueError:
        raise ModelError(f"{run.uri_of('report.json')} is not valid JSON") from None
    if rep.get("status") != "complete":
        raise ModelError(f"run {run.uri} is not complete (report status {rep.get('status')!r})")
    try:
        run_cfg = config_mod.load_saved(run.read("config.yaml").decode(), run.uri_of("config.yaml"))
    except FileNotFoundError:
        raise ModelError(f"run {run.uri} has no config.yaml: its preprocessing is unknown") from None
    trained = list(rep["models"])
    names = trained if request.model == "all" else [rep["best_model"] if request.model == "best" else request.model]
    for name in names:
        if name not in trained:
            raise ModelError(f"run {run.uri} has no model {name!r} (it trained: {', '.join(trained)})")
    return run, rep, run_cfg, names


def _name(request: Request) -> str:
    name = request.name or request.data.rstrip("/").rpartition("/")[2] or "external"
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name in (".", ".."):
        raise ConfigError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only")
    return name


def _load(data: Store, data_cfg, metrics: PredictMetrics, pseudo: privacy.Pseudonymizer, out: Store
          ) -> tuple[Images, list[dict]]:
    items, unsafe, labeled = dataset.list_for_scoring(data, data_cfg, pseudo)
    if not labeled:
        raise DataError(f"{redact(data.uri)} has no labels (neither {data_cfg.manifest} nor class folders "
                        f"{', '.join(c + '/' for c in data_cfg.classes)}): evaluate needs labelled images")
    images, unusable = Images([], [], []), [{"uri": u["uri"], "reason": u["reason"]} for u in unsafe]
    for start in range(0, len(items), CHUNK):
        chunk = items[start:start + CHUNK]
        began = time.perf_counter()
        raw = data.read_many([i.key for i in chunk], data_cfg.download_threads)
        kept, arrays, skipped = dataset.decode_all(raw, chunk, data_cfg.image_size, data_cfg.max_image_pixels,
                                                   data_cfg.download_threads, dedupe=False, roi_mode=data_cfg.roi,
                                                   where=privacy.namer(data, pseudo, out), pseudo=pseudo)
        metrics.stage("decode", time.perf_counter() - began)
        unusable += [{"uri": data.uri_of(s["key"]), "reason": s["reason"]} for s in skipped]
        images.items += kept
        images.pixels += arrays
        images.digests += [fingerprint.pixel_digest(a) for a in arrays]
    if not images.items:
        first = unusable[0]["reason"] if unusable else "none listed"
        raise DataError(f"no usable images under {redact(data.uri)} ({len(unusable)} unusable; first: {first})")
    return images, unusable


def _overlap(run: Store, images: Images, own_ids: list[bool], pseudo: privacy.Pseudonymizer
             ) -> tuple[list[str], dict]:
    """Why each image is left out of the metrics ("" when evaluated): a development image (by pixel
    content), a development patient (by pseudonymised id), or a repeat within the set (by pixel
    content, counted once); the report's ``overlap`` section counts each."""
    try:
        known = fingerprint.read_fingerprints(run)
        dev_patients, check = fingerprint.read_patients(run)
    except FileNotFoundError:
        known, dev_patients, check = {}, None, None
    if dev_patients is not None and check != pseudo.check():
        patients_status, dev_patients = ("not checked: this evaluation's pseudonym key is not the run's (set "
                                         f"{privacy.ENV_KEY} as the run had it)"), None
    elif dev_patients is None:
        patients_status = "not checked (the run records no development patient ids)"
    else:
        patients_status = "checked by pseudonymised patient id"
    ids = [p if own else "" for p, own in zip((i.patient_id for i in images.items), own_ids)]
    keys = [i.key for i in images.items]
    reasons = development.exclusions(keys, images.digests, ids, [i.label for i in images.items], known,
                                     dev_patients or ())
    pixels = sum(r == development.DEVELOPMENT_IMAGE for r in reasons)
    if known and pixels == len(reasons):
        raise DataError(f"all {pixels} external images are development images of run {run.uri} (same decoded pixels "
                        f"as {fingerprint.FILENAME} lists): this is not an external set")
    shared = sorted({i for i, r in zip(ids, reasons) if r == development.DEVELOPMENT_PATIENT})
    by_patient = sum(r == development.DEVELOPMENT_PATIENT for r in reasons)
    repeats = sum(r.startswith("repeat of ") for r in reasons)
    if all(reasons):
        raise DataError(f"no external image of {len(reasons)} is left to evaluate: {pixels} are development images, "
                        f"{by_patient} images of development patients, {repeats} repeats within the set")
    section = {"method": fingerprint.METHOD, "checked": bool(known), "count": pixels if known else None,
               "patients": {"status": patients_status, "checked": dev_patients is not None,
                            "shared_patients": len(shared) if dev_patients is not None else None,
                            "images": by_patient},
               "repeats": {"images": repeats, "status": f"{repeats} image(s) repeat another image of this set "
                                                        "(same decoded pixels): each counted once"}}
    if not known:
        section["status"] = "not checked (the run has no fingerprints.json)"
    else:
        section["status"] = f"{pixels} of {len(reasons)} images are development images, excluded from every metric"
        section["examples"] = sorted(k for k, r in zip(keys, reasons) if r == development.DEVELOPMENT_IMAGE)[:20]
    if dev_patients is not None:
        section["status"] += (f"; {by_patient} image(s) of {len(shared)} development patient(s) (same pseudonymised "
                              "patient id), excluded")
    if repeats:
        section["status"] += f"; {repeats} repeat(s) within the set counted once"
    return reasons, section


def _score(run: Store, model: ensemble.RunModel, images: Images, device: torch.device, batch: int, scratch: str,
           metrics: PredictMetrics) -> tuple[np.ndarray, np.ndarray]:
    """The margins (the mean of the members') and the mean logits N x K (head order) of every image."""
    scorer = ensemble.EnsembleScorer(ensemble.load_members(run, model, device, scratch), device)
    margins, logits = [], []
    for start in range(0, len(images.pixels), batch):
        began = time.perf_counter()
        x = torch.from_numpy(np.stack(images.pixels[start:start + batch])).permute(0, 3, 1, 2).contiguous()
        m, z = scorer.margins_and_logits(x.to(device))
        margins.append(m.double().cpu())
        logits.append(z.double().cpu())
        metrics.chunk_scored(model.name, len(x), time.perf_counter() - began, 0)
    return torch.cat(margins).numpy(), torch.cat(logits).numpy()


def _model_section(model: ensemble.RunModel, labels, margins, ev, pooled_dev: bool, clusters) -> dict:
    probabilities = 1 / (1 + np.exp(-margins))
    section = evaluate.diagnostic_report(labels, probabilities, ev.ci_method, ev.confidence_level, 0.5, scores=margins,
                                         clusters=clusters)
    section["calibration"] = calibration.calibration(labels, probabilities, margins)
    primary = external_report.at_threshold(labels, probabilities, 0.5, ev.ci_method, ev.confidence_level,
                                           "pre-specified before training", clusters)
    youden = external_report.at_threshold(labels, probabilities, model.youden, ev.ci_method, ev.confidence_level,
                                          "the development run's Youden threshold, frozen: never re-chosen here"
                                          + (" (median of the folds')" if model.is_ensemble else ""), clusters)
    section["thresholds"] = {"primary": {**primary, "pre_specified": True},
                             "youden": {**youden, "exploratory": True, "values": [model.youden]}}
    section["side_by_side"] = external_report.side_by_side(model.development, section, pooled_dev)
    section["scoring"] = model.kind
    section["weights"] = model.weights()
    section["development"] = {"roc_auc": model.development["roc_auc"], "metrics": model.development["metrics"]}
    return section


def evaluate_external(request: Request, cfg: Config, metrics: PredictMetrics, stats: TransferStats,
                      scratch: str) -> dict:
    run, rep, run_cfg, names = _open(request, cfg)
    name = _name(request)
    models = [ensemble.run_model(rep, n, run.uri) for n in names]
    device = train.resolve_device(request.device)
    metrics.run_started(rep["run_id"], device.type)
    data_cfg = run_cfg.data  # the run's class names, image size, manifest name
    data = open_store(request.data, cfg.storage, data_cfg.download_threads, stats)
    ev = evaluate_config(run_cfg.evaluate, request.evaluate)  # before anything is read or written
    wanted = ev.subgroups
    if request.output:
        check_apart(request.data, request.output, "--data", "--output")  # before anything is written
    out = open_store(request.output, cfg.storage, stats=stats) if request.output else run.child(f"external/{name}")
    pseudo = privacy.for_run(run, data_cfg.pseudonymize_keys)  # the run's key: the run's pseudonyms
    with privacy.kept_on_failure(pseudo, out):  # data.pseudonymize_keys: an error names keys by their pseudonyms
        images, unusable = _load(data, data_cfg, metrics, pseudo, out)
    own_ids = [bool(i.patient_id) for i in images.items]  # an image without an id gets one of its own below
    shown, patients = privacy.outputs([i.key for i in images.items], [i.patient_id for i in images.items], unusable,
                                      data, pseudo)
    for item, key, patient in zip(images.items, shown, patients):
        item.key, item.patient_id = key, patient
    covariates = sections.covariate_map([i.key for i in images.items], [i.site for i in images.items],
                                        [i.covariates for i in images.items])
    subgroups.check_columns(wanted, sections.columns(covariates), data.uri_of(data_cfg.manifest))
    reasons, overlap = _overlap(run, images, own_ids, pseudo)
    # the endpoint's labels (1 positive, 0 any other class): an external set may hold a subset of the run's classes
    labels_all = evaluate.endpoint_labels(np.array([i.label for i in images.items], int), len(data_cfg.classes))
    keep = np.array([not r for r in reasons])
    labels = labels_all[keep]
    clusters = [i.patient_id for i, k in zip(images.items, keep) if k]
    log.info("evaluating %d images under %s (%d excluded: development images or patients, repeats) with %s of run %s",
             int(keep.sum()), redact(data.uri), int((~keep).sum()), ", ".join(names), rep["run_id"])
    batch = request.batch_size or run_cfg.train.batch_size
    pooled_dev = rep["evaluation"]["pooled"]
    margins_by, logits_by, sections_by, pooled = {}, {}, {}, {}
    head = data_cfg.head_classes
    every_lesion = [pseudo.lesion(i.lesion_id) for i in images.items]
    lesion_ids = [lesion for lesion, k in zip(every_lesion, keep) if k]
    lesion_tables = {}
    for model in models:
        margins_by[model.name], logits_by[model.name] = _score(run, model, images, device, batch, scratch, metrics)
        m = margins_by[model.name][keep]
        sections_by[model.name] = _model_section(model, labels, m, ev, pooled_dev, clusters)
        rows = predictions.rows(pooled_keys(images, keep), clusters, [i.label for i, k in zip(images.items, keep) if k],
                                data_cfg.endpoint_classes, None, model.name, 1 / (1 + np.exp(-m)), m,
                                logits_by[model.name][keep], head, lesion_ids)
        section = sections_by[model.name]  # the K classes and the lesions (issue 27), as in the run's report
        section["multiclass"], section["by_lesion"], lesion_tables[model.name] = kclasses.sections(rows, head, ev.ci_method,
                                                                         ev.confidence_level, run_cfg.train.seed)
        pooled[model.name] = _Pooled([i.key for i, k in zip(images.items, keep) if k], labels, 1 / (1 + np.exp(-m)), m,
                                     clusters, kclasses.called_right(rows) if len(head) > 2 else None)
    site_count = len({covariates.get(k, {}).get("site", "") for k in pooled[names[0]].keys} - {""})
    dc = sections.add(sections_by, pooled, ev, covariates, with_sites=site_count >= 2)
    comparison = _comparison(names, pooled, ev, run_cfg.train.seed, clusters)
    final = _document(request, name, rep, run_cfg, data, out, images, unusable, overlap, reasons, sections_by,
                      comparison, dc, device)
    pseudo.save(out)  # a key made here (a run from before pseudonyms had none), under private/
    _write(out, final, images, margins_by, reasons, covariates, scratch, logits_by,
           every_lesion if any(every_lesion) else None, lesion_tables)
    return {"uri": out.uri_of("report.json"), "report": final, "evaluated": int(keep.sum()),
            "excluded": int((~keep).sum()), "pseudonymizer": pseudo}


def summary_lines(rep: dict) -> list[str]:
    """For the terminal: each model's development and external ROC AUC, and the overlap."""
    def auc(m: dict) -> str:
        if m["value"] is None:
            return "n/a"
        if m.get("ci_low") is None:
            return f"{m['value']:.3f} [{report_mod.interval_words(m)}]"
        return f"{m['value']:.3f} ({report_mod.interval_words(m)})"

    lines = []
    for name, m in rep["models"].items():
        row = next(r for r in m["side_by_side"]["rows"] if r["metric"] == "roc_auc")
        lines.append(f"{name} ({m['scoring']}): ROC AUC development {auc(row['development'])}, "
                     f"external {auc(row['external'])}")
    return lines + [f"overlap with the development data: {rep['external']['overlap']['status']}"]


@dataclass
class _Pooled:
    keys: list
    labels: np.ndarray
    probabilities: np.ndarray
    scores: np.ndarray
    clusters: list  # patient id per image ("" without one)
    class_correct: np.ndarray | None = None  # K > 2: is the most probable class the true one


def _comparison(names, pooled, ev, seed: int, clusters) -> dict | None:
    if len(names) < 2 or len(set(pooled[names[0]].labels.tolist())) < 2:
        return None
    a, b = pooled[names[0]], pooled[names[1]]
    correct = tuple((p.probabilities >= 0.5).astype(int) == p.labels for p in (a, b))
    multi = a.class_correct is not None and b.class_correct is not None
    return compare.compare((names[0], names[1]), a.labels, (a.scores, b.scores), correct, ev.confidence_level, seed,
                           clusters=clusters, correct_class=(a.class_correct, b.class_correct) if multi else None)


def _document(request, name, rep, run_cfg, data, out, images, unusable, overlap, reasons, models, comparison, dc,
              device) -> dict:
    keep = np.array([not r for r in reasons])
    labels = np.array([i.label for i in images.items], int)[keep]
    counts = dataset.class_counts(labels, run_cfg.data.head_classes)
    if len(run_cfg.data.classes) > 2:  # only the classes the external set holds
        counts = {c: n for c, n in counts.items() if n}
    other = "negative" if len(run_cfg.data.classes) == 2 else "other"
    dataset_section = {"uri": redact(data.uri), "classes": {run_cfg.data.positive_class: "positive",
                                                            **{c: other for c in run_cfg.data.classes
                                                               if c != run_cfg.data.positive_class}},
                       "skipped": unusable, "split_method": "external (none: every image is evaluated)",
                       "images": counts}
    artifacts = {k: out.uri_of(v) for k, v in (("report_markdown", "report.md"), ("report_html", "report.html"),
                                               ("predictions", "predictions.csv"))}
    artifacts["run_report"] = run_report_uri = f"{redact(request.run.rstrip('/'))}/report.json"
    evaluation = {"method": "external", "kind": "external", "folds": 1, "pooled": False, "finished": [],
                  "missing": []}
    final = report_mod.build(rep["run_id"], run_cfg.to_dict(), dataset_section, models, "accuracy", artifacts,
                             environment=report_mod.environment(device),
                             created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             evaluation=evaluation, comparison=comparison)
    final["best_model"] = rep["best_model"] if rep["best_model"] in models else next(iter(models))
    final["selection"] = {"metric": "the development run's choice", "note": "external data chooses nothing: "
                          "no model, no threshold is selected on these images"}
    final["decision_curve"] = dc
    final["external"] = {"name": name, "run_uri": run_report_uri, "data_uri": redact(data.uri), "overlap": overlap,
                         "counts": {"scored": len(images.items), "evaluated": int(keep.sum()),
                                    "excluded_development": sum(r in development.IN_DEVELOPMENT for r in reasons),
                                    "excluded_repeats": sum(r.startswith("repeat of ") for r in reasons),
                                    "unusable": len(unusable)},
                         "clustered": clustered.codes([i.patient_id for i, k in zip(images.items, keep) if k],
                                                      int(keep.sum())) is not None,
                         "unit_of_analysis": clustered.unit_of_analysis(
                             [i.patient_id for i, k in zip(images.items, keep) if k], int(keep.sum()))["text"]}
    report_mod.describe(final)  # the external kind's own title, design and caveat
    report_mod.validate(final)
    return final


def pooled_keys(images: Images, keep) -> list[str]:
    return [i.key for i, k in zip(images.items, keep) if k]


def _write(out: Store, final: dict, images: Images, margins_by: dict, reasons, covariates: dict, scratch: str,
           logits_by: dict | None = None, lesion_ids: list[str] | None = None,
           lesion_tables: dict | None = None) -> None:
    head = tuple(final["config"]["data"].get("classes") or ()) or None
    positive, negative = report_mod.class_names(final)
    if head is not None:
        head = classes.head_order(head, positive)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    # lesion_id (pseudonymised) when the manifest gave lesion ids: lesions.csv's rows are their lesions
    writer.writerow(CSV_COLUMNS + tuple(f"p_{c}" for c in head or ()) + (("lesion_id",) if lesion_ids else ()))
    for model, margins in margins_by.items():
        per_class = predictions.class_probabilities(logits_by[model]) if logits_by else None
        for i, item in sorted(enumerate(images.items), key=lambda pair: pair[1].key):
            name = head[item.label] if head is not None else (positive if item.label == 1 else negative)
            writer.writerow([item.key, item.patient_id, item.site, name, model,
                             repr(float(1 / (1 + np.exp(-margins[i])))), repr(float(margins[i])),
                             "yes" if reasons[i] in development.IN_DEVELOPMENT else "no", reasons[i],
                             *(repr(float(v)) for v in (per_class[i] if per_class is not None else ())),
                             *((lesion_ids[i],) if lesion_ids else ())])
    out.write_bytes("predictions.csv", buffer.getvalue().encode())
    if lesion_ids and lesion_tables:
        out.write_bytes(kclasses.LESIONS_FILE, kclasses.lesions_csv(lesion_tables))
    figures = {}
    if final.get("decision_curve"):
        out.upload_drawn("decision_curve.png", lambda path: decision.figure(final["decision_curve"], path,
                                                                            "Decision curve (external)"), scratch)
        figures["decision_curve"] = out.read("decision_curve.png")
    out.write_bytes("report.md", (external_report.markdown(final) + "\n" + kclasses.markdown(final)).encode())
    out.write_bytes("report.html", report_html.render(final, figures).encode())
    out.write_bytes("report.json", json.dumps(final, indent=2).encode())  # last: marks the evaluation complete
