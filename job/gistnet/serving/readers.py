"""``gistnet readers``: a reader study, with or without the model.

readers file (local or s3://) -> checked table (fully crossed) -> with ``--run`` and ``--data``,
the cases scored by the run's model as ``gistnet evaluate`` scores them (thresholds frozen,
development images excluded; its report lands under ``<output>/model-evaluation/``) ->
``gistnet.evidence.readers`` -> ``readers.json`` (schema-checked, written last: it marks the
study complete), ``readers.md``, ``readers.html``, ``readers_roc.png``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from gistnet import __version__
from gistnet.config import Config
from gistnet.data import readers as readers_file
from gistnet.data.overlap import check_apart
from gistnet.data.storage import open_store, redact
from gistnet.errors import ConfigError, DataError
from gistnet.evidence import readers as study_mod
from gistnet.evidence import readers_report
from gistnet.evidence import multiclass
from gistnet.evidence.kclasses import LESIONS_FILE
from gistnet.evidence import report as report_mod
from gistnet.serving import external

log = logging.getLogger(__name__)
MODEL_EVALUATION = "model-evaluation"


@dataclass(frozen=True)
class Request:
    readers: str
    output: str | None = None  # default <run>/readers with --run
    run: str | None = None
    data: str | None = None
    model: str = "best"
    batch_size: int | None = None
    device: str = "auto"
    covariance: str = "jackknife"


def read_table(uri: str, cfg: Config) -> readers_file.ReaderTable:
    """The readers file at ``uri`` (a local path or s3://bucket/key), parsed and checked."""
    folder, _, name = uri.rstrip("/").rpartition("/")
    if not name:
        raise ConfigError(f"--readers {redact(uri)!r} names no file")
    store = open_store(folder or ".", cfg.storage)
    try:
        text = store.read(name).decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"readers file {redact(uri)} not found") from None
    except UnicodeDecodeError:
        raise DataError(f"readers file {redact(uri)} is not UTF-8 text (a CSV is expected)") from None
    return readers_file.read_readers(text, redact(uri))


def _scored(out_uri: str, request: Request, cfg: Config) -> tuple[dict, dict, str, object]:
    """Score the data set as ``gistnet evaluate`` does; per image key (and per lesion id, pseudonymised as
    the run's outputs are, when the manifest gave lesion ids): label, margin, development flag."""
    done = external.run(external.Request(run=request.run, data=request.data, output=out_uri, name="readers",
                                         model=request.model, batch_size=request.batch_size, device=request.device),
                        cfg)
    report = done["report"]
    evaluation = open_store(out_uri, cfg.storage)
    rows = list(csv.DictReader(io.StringIO(evaluation.read("predictions.csv").decode())))
    model = report["best_model"]
    cases = {r["key"]: r for r in rows if r["model"] == model}
    cases.update(_lesion_cases(evaluation, rows, model, report_mod.class_names(report)[0]))
    return report, cases, model, done["pseudonymizer"]


def _lesion_cases(evaluation, rows: list[dict], model: str, positive: str) -> dict:
    """Each lesion of the data set as a case (issue 27's lesion score: the mean of its images' logits,
    then the softmax; from lesions.csv, which holds the lesions with an image left after excluding
    development images): label, score (the endpoint's logit margin), development flag."""
    every = {r["lesion_id"]: r["label"] for r in rows if r["model"] == model and r.get("lesion_id")}
    if not every:
        return {}
    scored = {r["lesion_id"]: r for r in csv.DictReader(io.StringIO(evaluation.read(LESIONS_FILE).decode()))
              if r["model"] == model}
    cases = {}
    for lesion, label in every.items():
        row = scored.get(lesion)
        if row is None:  # every image of the lesion is a development image (or a repeat)
            cases[lesion] = {"label": label, "score": "nan", "in_development": "yes", "unit": "lesion"}
            continue
        columns = [k for k in row if k.startswith("p_")]
        with np.errstate(divide="ignore"):  # a probability of 0 is a log of -inf, as the margin then is
            log_p = np.log(np.array([[float(row[k]) for k in columns]]))
        margin = multiclass.endpoint(log_p, columns.index(f"p_{positive}"))[1][0]
        cases[lesion] = {"label": row["label"], "score": repr(float(margin)), "in_development": "no", "unit": "lesion"}
    return cases


def _thresholds(report: dict, model: str) -> dict:
    """The development run's frozen thresholds, on the margin scale."""
    thresholds = report["models"][model]["thresholds"]
    youden = thresholds["youden"]["values"][0]
    logit = lambda p: math.log(p / (1 - p)) if 0 < p < 1 else (math.inf if p >= 1 else -math.inf)  # noqa: E731
    return {"0.5 (pre-specified)": 0.0, "the development run's Youden threshold (frozen)": logit(youden)}


def _join(table, scored: dict, positive: str) -> tuple[list[str], dict]:
    """Cases known to the data set, development cases left out; errors for unknown cases and truths."""
    units = {scored[c].get("unit", "image") for c in table.cases if c in scored}
    if len(units) > 1:
        raise DataError(f"{table.where}: the cases mix image keys and lesion ids: a study has one unit of "
                        "diagnosis (all image keys, or all lesion ids)")
    unknown = [c for c in table.cases if c not in scored]
    if unknown:
        raise DataError(f"{table.where}: {len(unknown)} of {len(table.cases)} cases are not images of --data "
                        f"(case ids are image keys under --data, e.g. {next(iter(scored), 'GIST/a.png')!r}, or "
                        f"the manifest's lesion ids): "
                        f"{readers_file.first_few([repr(c) for c in unknown], ', ')}")
    stated = table.per_case("truth")
    for case, truth in stated.items():
        if truth != scored[case]["label"]:
            raise DataError(f"{table.where}: case {case!r} has truth {truth!r}, the data set labels it "
                            f"{scored[case]['label']!r}")
    development = [c for c in table.cases if scored[c]["in_development"] == "yes"]
    kept = [c for c in table.cases if scored[c]["in_development"] != "yes"]
    return kept, {"development_cases": len(development), "examples": development[:20]}


def _study(table, kept: list[str], truth_of: dict, positive: str, classes: set) -> study_mod.Study:
    index = [table.cases.index(c) for c in kept]
    truth = np.array([1 if truth_of[c] == positive else 0 for c in kept])
    calls = None
    if table.has_calls:
        raw = table.calls()[:, :, index]
        bad = sorted({str(v) for v in raw.ravel() if v not in classes})
        if bad:
            raise DataError(f"{table.where}: call {bad[0]!r} is not a class of the study ({', '.join(sorted(classes))})")
        calls = (raw == positive).astype(int)
    patients = table.per_case("patient_id")
    clusters = [patients.get(c, "") for c in kept] if patients else None
    ratings = table.ratings()[:, :, index] if table.has_ratings else None
    return study_mod.Study(table.modalities, table.readers, tuple(kept), truth, ratings, calls, clusters)


def _lesions_named_as_outputs(table, scored: dict, pseudo):
    """The readers file names lesions as the manifest does; the run's outputs name them by their
    pseudonyms (``l-<hmac>``, the run's key): a case that is no image key but whose pseudonym is a
    lesion of the data set is renamed to it, so no raw lesion id reaches readers.json."""
    renamed = {c: pseudo.lesion(c) for c in table.cases
               if c not in scored and scored.get(pseudo.lesion(c), {}).get("unit") == "lesion"}
    return table.renamed(renamed) if renamed else table


def run(request: Request, cfg: Config) -> dict:
    """Analyse the study and write its documents; returns the readers.json content and its URI."""
    if request.covariance not in ("jackknife", "delong"):
        raise ConfigError(f"--covariance {request.covariance!r}: use jackknife or delong")
    if bool(request.run) != bool(request.data):
        raise ConfigError("--run and --data go together: the model scores the cases of --data "
                          "(leave both out to analyse the readers alone)")
    if not request.output and not request.run:
        raise ConfigError("--output is required without --run (with --run it defaults to <run>/readers)")
    out_uri = request.output or f"{request.run.rstrip('/')}/readers"
    if request.data:
        check_apart(request.data, out_uri, "--data", "--output")
    table = read_table(request.readers, cfg)
    ev = cfg.evaluate
    model = None
    provenance: dict = {"run": None, "data": None, "excluded": None}
    if request.run:
        report, scored, name, pseudo = _scored(f"{out_uri.rstrip('/')}/{MODEL_EVALUATION}", request, cfg)
        positive, negative = report_mod.class_names(report)
        table = _lesions_named_as_outputs(table, scored, pseudo)
        kept, excluded = _join(table, scored, positive)
        if len(kept) < 2:
            raise DataError(f"{table.where}: {len(kept)} case(s) left after leaving out development images")
        truth_of = {c: scored[c]["label"] for c in kept}
        classes_of_run = report["config"]["data"].get("classes") or [positive, negative]  # a call may name any
        model = study_mod.Model(name, np.array([float(scored[c]["score"]) for c in kept]), _thresholds(report, name))
        ci_method, level = report["config"]["evaluate"]["ci_method"], report["config"]["evaluate"]["confidence_level"]
        provenance = {"run": redact(request.run), "data": redact(request.data), "excluded": excluded,
                      "model_evaluation": f"{redact(out_uri.rstrip('/'))}/{MODEL_EVALUATION}/report.json"}
    else:
        truth_of = table.per_case("truth")
        missing = [c for c in table.cases if c not in truth_of]
        if missing:
            raise DataError(f"{table.where}: without --run and --data every case needs a 'truth' (the reference "
                            f"class); {len(missing)} have none, e.g. {missing[0]!r}")
        positive, negative = cfg.data.positive_class, cfg.data.negative_class
        others = sorted(set(truth_of.values()) - {positive})
        if len(others) > 1 or positive not in truth_of.values():
            raise DataError(f"{table.where}: the truths are {', '.join(sorted(set(truth_of.values())))}; a reader "
                            f"study compares {positive} (data.positive_class) against one other class")
        negative = others[0] if others else negative
        kept, ci_method, level = list(table.cases), ev.ci_method, ev.confidence_level
    known = set(classes_of_run) if request.run else {positive, negative}
    study = _study(table, kept, truth_of, positive, known)
    if study.truth.min() == study.truth.max():
        raise DataError(f"{table.where}: every case is {positive if study.truth[0] else negative}: "
                        "a reader study needs cases of both classes")
    numbers = study_mod.analyse(study, model, ci_method, level, request.covariance)
    document = {"schema": readers_report.SCHEMA_ID, "gistnet_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "readers_file": redact(request.readers), "classes": {"positive": positive, "negative": negative},
                "ci_method": ci_method, "confidence_level": level, **provenance, **numbers}
    readers_report.validate(document)
    out = open_store(out_uri, cfg.storage)
    readers_report.write(out, document)
    log.info("reader study: %d readers, %d modalities, %d cases -> %s", len(study.readers), len(study.modalities),
             len(study.cases), out.uri_of("readers.json"))
    return {"uri": out.uri_of("readers.json"), "document": document}


def summary_lines(document: dict) -> list[str]:
    """For the terminal: the modality comparison and the model against the readers."""
    lines = []
    rrrc = document["or"].get("rrrc") if document["or"]["available"] else None
    if rrrc and rrrc["statistic"] is not None:
        first = rrrc["differences"][0]
        lines.append(f"modalities (OR, random readers and cases): {first['a']} - {first['b']} {rrrc['difference']:+.3f} "
                     f"({rrrc['ci_low']:+.3f} to {rrrc['ci_high']:+.3f}), F({rrrc['ndf']:.0f}, {rrrc['ddf']:.2f}) = "
                     f"{rrrc['statistic']:.2f}, p = {rrrc['p']:.3g}")
    elif document["or"].get("note"):
        lines.append(f"modalities: {document['or']['note']}")
    if document.get("model"):
        for modality, part in document["model"]["by_modality"].items():
            if "auc" in part:
                a = part["auc"]
                lines.append(f"model vs readers ({modality}): AUC {a['model_auc']:.3f} vs {a['readers_auc']:.3f}, "
                             f"difference {a['difference']:+.3f} ({a['ci_low']:+.3f} to {a['ci_high']:+.3f}), "
                             f"p = {a['p']:.3g}")
    return lines
