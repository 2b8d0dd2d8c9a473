"""``checklist.md``: the CLAIM 2024 and TRIPOD+AI items a run can fill, from its report.

Each item the job can fill says what the run did and points at the report section
(``report.html#<id>`` and the ``report.json`` path). The items only the authors can fill
(clinical context, reference standard, ethics, ...) are listed as such, so the checklist
is never presented as complete.
"""

from __future__ import annotations

from typing import Callable

REFERENCES = ("CLAIM 2024: Tejani et al., Radiol Artif Intell 2024;6(4):e240300 (44 items, numbered as published). "
              "TRIPOD+AI: Collins et al., BMJ 2024;385:e078378 (item numbers as in its table). "
              "Check the wording against the form your journal asks for.")

# The published CLAIM 2024 items (number -> topic, paraphrased); tests/evidence/test_checklist.py
# holds an independent copy of the list to check this one against.
CLAIM_2024 = {
    1: "title or abstract identifies AI work", 2: "structured abstract", 3: "background, intended use, role of AI",
    4: "objectives, hypotheses", 5: "prospective or retrospective", 6: "study goal", 7: "data sources",
    8: "inclusion and exclusion criteria", 9: "data preprocessing", 10: "selection of data subsets",
    11: "de-identification", 12: "missing data", 13: "image acquisition protocol",
    14: "definition of the reference standard", 15: "rationale for the reference standard",
    16: "annotators and their qualifications", 17: "annotation of the test set", 18: "inter- and intra-rater variability",
    19: "assignment of data to partitions", 20: "level of separation between partitions",
    21: "intended sample size", 22: "detailed model description", 23: "software libraries and frameworks",
    24: "initialisation of model parameters", 25: "training details", 26: "selection of the final model",
    27: "ensembling", 28: "performance metrics", 29: "statistical significance and uncertainty",
    30: "robustness or sensitivity analysis", 31: "explainability or interpretability methods",
    32: "evaluation on internal data", 33: "testing on external data", 34: "clinical-trial registration",
    35: "numbers of patients or examinations included and excluded",
    36: "demographic and clinical characteristics per partition", 37: "performance metrics with uncertainty",
    38: "diagnostic accuracy estimates and their precision", 39: "failure analysis of incorrect results",
    40: "limitations", 41: "implications for practice, intended use", 42: "where the full protocol is",
    43: "availability of code, model and data", 44: "funding",
}


def claim(*numbers: int) -> str:
    """CLAIM 2024 items by number, each with its topic: "#35 numbers of patients ..."."""
    return "; ".join(f"#{n} {CLAIM_2024[n]}" for n in numbers) if numbers else "-"


def _models(r: dict) -> dict:
    return r["models"]


def _config(r: dict, section: str) -> dict:
    return r.get("config", {}).get(section, {})


def _counts(counts: dict) -> str:
    return ", ".join(f"{n} {name}" for name, n in counts.items())


def _ci(m: dict) -> str:
    """A value and its interval: "-0.029 (-0.075 to 0.011)"; "n/a (reason)" without bounds."""
    if m.get("value") is None:
        return "n/a"
    if m.get("ci_low") is None or m.get("ci_high") is None:
        return f"{m['value']:.3f} (interval n/a: {m.get('note', 'not estimable')})"
    return f"{m['value']:.3f} ({m['ci_low']:.3f} to {m['ci_high']:.3f})"


def _data_source(r):
    return f"images read from `{r['dataset']['uri']}`; classes {_counts(r['dataset']['classes'])}"


def _outcome(r):
    classes = r["dataset"]["classes"]
    positive = next(n for n, role in classes.items() if role == "positive")
    others = [n for n in classes if n != positive]
    lesion = any("by_lesion" in m for m in _models(r).values())
    by_lesion = "; every endpoint metric also by lesion (mean of its images' logits, then the softmax)" if lesion else ""
    if len(classes) == 2:
        return f"{positive} (positive) against {others[0]}: P({positive}) of a two-class softmax{by_lesion}"
    return (f"the clinical endpoint {positive} against every other class ({', '.join(others)}): P({positive}) is "
            f"the softmax mass of {positive} over {len(classes)} classes; beside it the {len(classes)}-class call "
            f"(the most probable class){by_lesion}")


def _patients(ds: dict) -> str:
    p = ds.get("patients")
    if not p:
        return "patients: unknown (no patient ids in a manifest)"
    return (f"{p['patients']} patients ({p['images']} images with a patient id; images per patient median "
            f"{p['median']:g}, range {p['min']}-{p['max']})")


def _counts_item(r):
    ds = r["dataset"]
    used = (f"training {_counts(ds['train'])}; validation {_counts(ds['val'])}" if "train" in ds
            else f"{_counts(ds['images'])}, each validated once across the folds")
    return f"{used}; {_patients(ds)}; {len(ds['skipped'])} image(s) skipped, each listed with its reason"


def _split(r):
    level = ("patient (every image of a patient in one part)" if r["dataset"].get("patients")
             else "image (no patient ids)")
    evaluation = r.get("evaluation") or {}
    if evaluation.get("method") == "site":
        text = (f"leave-one-site-out: each of the {evaluation['folds']} sites is held out once as a whole, the model "
                "trained on the others; not stratified by class (a held-out site keeps its own class mix); "
                f"seed {_config(r, 'train').get('seed')}; level of separation: site (and so patient)")
        return text + "; the image keys and the held-out site of each fold are saved in `split.json`"
    text = (f"{r['dataset']['split_method']}, stratified by class, seed {_config(r, 'train').get('seed')}; "
            f"level of separation: {level}")
    if evaluation:
        folds = f", {evaluation['folds']} folds" if evaluation.get("folds") else ""
        text += f"; evaluation: {evaluation.get('method')}{folds}"
    return text + "; the image keys of each part are saved in `split.json`"


def _preprocessing(r):
    size = _config(r, "data").get("image_size")
    return (f"decoded to RGB (grayscale replicated), resized on the shorter side and centre-cropped to {size} px, "
            "normalised with the ImageNet mean and SD; unreadable or oversized images skipped and listed")


def _augmentation(r):
    ds, aug = r["dataset"], _config(r, "augmentation")
    expanded = f"; training after augmentation: {_counts(ds['train_augmented'])}" if "train_augmented" in ds else ""
    return (f"mode {ds.get('augmentation_mode', aug.get('mode'))} on the training part only (rotation "
            f"+-{aug.get('rotation_degrees')} deg, {aug.get('flip')} flip, CLAHE, log and sigmoid contrast){expanded}")


def _model(r):
    init = _config(r, "train").get("init_weights") or {}
    return (f"torchvision {', '.join(_models(r))} with a 2-class head; initial weights: "
            + (", ".join(f"{k} from `{v}`" for k, v in init.items()) if init else "random (torchvision default)"))


def _training(r):
    t = _config(r, "train")
    return (f"{t.get('epochs')} epochs, batch {t.get('batch_size')}, {t.get('optimizer')} "
            f"(lr {t.get('learning_rate')}, "
            f"weight decay {t.get('weight_decay')}), cosine schedule, cross-entropy, seed {t.get('seed')}, "
            f"device {r['environment']['device']}; final-epoch weights reported")


def _selection(r):
    note = r.get("selection", {}).get("note", "")
    return f"best model {r['best_model']} by {r.get('selection', {}).get('metric', 'validation accuracy')}: {note}"


def _folds(r):
    ev = r.get("evaluation") or {}
    if ev.get("method") not in ("kfold", "site"):
        return None
    missing = ev.get("missing") or []
    design = (f"leave-one-site-out (internal-external) cross-validation over {ev['folds']} sites, each held out "
              "once; metrics pooled over the out-of-fold predictions, per site and meta-analysed across sites"
              if ev["method"] == "site" else
              f"{ev['folds']}-fold cross-validation, metrics pooled over the out-of-fold predictions")
    return (design + ", mean and SD across folds per model"
            + (f"; {len(missing)} unit(s) missing (report partial)" if missing else ""))


def _heterogeneity(r):
    """The per-site table and the random-effects meta-analysis a leave-one-site-out run computed."""
    parts = []
    for name, m in _models(r).items():
        meta = (m.get("sites") or {}).get("meta_analysis")
        if meta is None:
            continue
        if "pooled_auc" not in meta:
            parts.append(f"{name}: {len(m['sites']['per_site'])} sites, meta-analysis {meta.get('status')}")
            continue
        pi = meta.get("prediction_interval") or {}
        new_site = ("n/a" if pi.get("ci_low") is None else
                    f"{pi['ci_low']:.3f} to {pi['ci_high']:.3f}")
        parts.append(f"{name}: per-site metrics of {meta['k']} sites; random-effects pooled AUC "
                     f"{_ci(meta['pooled_auc'])} ({meta.get('method', 'random effects')}), tau^2 {meta['tau2']:.3f}, "
                     f"I^2 {meta['i2'] * 100:.0f}%, prediction interval for a new site {new_site}")
    return "; ".join(parts) or None


def _metrics(r):
    parts = []
    for name, m in _models(r).items():
        level = m.get("confidence_level", 0.95)
        unit = m.get("unit_of_analysis", {}).get("text", "per image")
        parts.append(f"{name}: sensitivity {_ci(m['metrics']['sensitivity'])}, specificity "
                     f"{_ci(m['metrics']['specificity'])}, ROC AUC {_ci(m['roc_auc'])} ({level:.0%} CI, "
                     f"{m['ci_method']}; AUC {m['roc_auc']['method']}; {unit})")
    return "; ".join(parts)


def _calibration(r):
    found = {n: m["calibration"] for n, m in _models(r).items() if m.get("calibration")}
    if not found:
        return None
    def number(v):
        return "n/a" if v is None else _ci(v) if isinstance(v, dict) else f"{v:.3g}"

    return "; ".join(f"{n}: brier {number(c.get('brier'))}, calibration-in-the-large {number(c.get('intercept'))} "
                     f"(intercept with the slope fixed at 1), calibration slope {number(c.get('slope'))} (joint "
                     f"logistic fit)" + (f" [{c['note']}]" if c.get("note") else "")
                     for n, c in found.items())


def _comparison(r):
    c = r.get("comparison")
    if not c:
        return None
    parts = []
    if "delong" in c:
        parts.append(f"DeLong p = {c['delong'].get('p')}")
    if "auc_difference" in c:
        parts.append(f"AUC difference {_ci(c['auc_difference'])}")
    if "mcnemar" in c:
        parts.append(f"McNemar p = {c['mcnemar'].get('p')}")
    if c.get("unit_of_analysis"):
        parts.append(c["unit_of_analysis"]["text"])
    return "; ".join(parts) or "present"


def _thresholds(r):
    found = [n for n, m in _models(r).items() if m.get("thresholds")]
    base = "probability of the positive class; primary threshold 0.5 (pre-specified, as the paper)"
    return base + (f"; further thresholds for {', '.join(found)} (labelled in the report)" if found else "")


def _explain(r):
    found = {n: m["explain"] for n, m in _models(r).items() if m.get("explain")}
    if not found:
        return None
    def one(name, e):
        rho = e["randomisation_spearman"]
        return (f"{name}: {e['method']} at {e['layer']} on {e['images']} validation images, randomisation check "
                f"median Spearman {'n/a' if rho is None else f'{rho:.2f}'}"
                + (" (FLAGGED: " + ("not distinguishable from an untrained network" if e.get("untrained_like")
                                    else "maps do not follow the weights") + ")" if e.get("randomisation_flagged") else ""))
    return "; ".join(one(n, e) for n, e in found.items())


def _failures(r):
    parts = []
    for name, m in _models(r).items():
        cm = m["confusion_matrix"]
        shown = m.get("explain", {}).get("misclassified_shown")
        parts.append(f"{name}: {cm['fn']} false negative(s), {cm['fp']} false positive(s)"
                     + (f", {shown} shown with their Grad-CAM maps" if shown is not None else ""))
    return "; ".join(parts)


def _imbalance(r):
    ds = r["dataset"]
    return (f"{_counts(ds.get('train', ds.get('images', {})))}; no re-weighting or re-sampling beyond the "
            "augmentation")


def _software(r):
    env = r["environment"]
    return (f"gistnet {r['gistnet_version']}, torch {env.get('torch')}, python {env.get('python', '?')}"
            + (f", CUDA {env['cuda']}" if env.get("cuda") else "") + "; resolved configuration in `config.yaml`")


def _ensembling(r):
    return "none: each model is trained, scored and reported on its own"


HETEROGENEITY = "Heterogeneity of performance across centres or other clusters"
NOT_COMPUTED = "not in this report (this gistnet version or configuration does not compute it)"


def _kind(r: dict) -> str:
    return "kfold" if (r.get("evaluation") or {}).get("method") in ("kfold", "site") else "holdout"


# Where each item's evidence is in report.json: dotted paths, "<m>" for every model; a dict
# gives the paths per evaluation kind (a k-fold or leave-one-site-out run has no dataset.train
# or models.<m>.history).
PATHS = {
    "Data source": ["dataset.uri"],
    "Outcome definition": ["dataset.classes", "config.data.positive_class"],
    "Counts": {"holdout": ["dataset.train", "dataset.val", "dataset.skipped"],
               "kfold": ["dataset.images", "dataset.skipped"]},
    "Split": ["dataset.split_method", "evaluation.method"],
    "Preprocessing": ["config.data"],
    "Augmentation": {"holdout": ["dataset.train_augmented", "config.augmentation"], "kfold": ["config.augmentation"]},
    "Model": ["config.train.models", "config.train.init_weights"],
    "Ensembling": ["config.train.models"],
    "Training": {"holdout": ["models.<m>.history", "config.train"], "kfold": ["models.<m>.folds", "config.train"]},
    "Selection of the final model": ["best_model", "selection"],
    "Cross-validation": ["evaluation", "models.<m>.folds", "models.<m>.across_folds"],
    HETEROGENEITY: ["models.<m>.sites"],
    "Metrics with confidence intervals": ["models.<m>.metrics", "models.<m>.roc_auc", "models.<m>.unit_of_analysis"],
    "Calibration": ["models.<m>.calibration"],
    "Comparison of the models": ["comparison"],
    "Model output and thresholds": ["models.<m>.thresholds"],
    "Explainability": ["models.<m>.explain"],
    "Failure analysis": ["models.<m>.confusion_matrix"],
    "Class imbalance": {"holdout": ["dataset.train"], "kfold": ["dataset.images"]},
    "Software versions": ["environment", "gistnet_version"],
}

# (topic, CLAIM 2024 item numbers, TRIPOD+AI items, report.html anchor, filler)
JobItem = tuple[str, tuple[int, ...], str, str, Callable[[dict], str | None]]
JOB_ITEMS: list[JobItem] = [
    ("Data source", (7,), "5a", "dataset", _data_source),
    ("Outcome definition", (), "8a", "dataset", _outcome),
    ("Counts", (35,), "20a, 21", "dataset", _counts_item),
    ("Split", (19, 20), "12a", "dataset", _split),
    ("Preprocessing", (9,), "7", "software", _preprocessing),
    ("Augmentation", (25,), "7, 12c", "fig-augmentation_examples", _augmentation),
    ("Model", (22, 24), "12c", "software", _model),
    ("Ensembling", (27,), "12c", "software", _ensembling),
    ("Training", (25,), "12c", "fig-training_curves", _training),
    ("Selection of the final model", (26,), "12c", "summary", _selection),
    ("Cross-validation", (32,), "12a, 12c", "evaluation", _folds),
    (HETEROGENEITY, (), "12d, 23b", "sites-{model}", _heterogeneity),
    ("Metrics with confidence intervals", (28, 29, 37, 38), "12e, 23a", "summary", _metrics),
    ("Calibration", (28,), "12e, 23a", "model-{model}-calibration", _calibration),
    ("Comparison of the models", (29,), "12e", "comparison", _comparison),
    ("Model output and thresholds", (28,), "15", "model-{model}-thresholds", _thresholds),
    ("Explainability", (31,), "-", "model-{model}-explain", _explain),
    ("Failure analysis", (39,), "-", "model-{model}-confusion", _failures),
    ("Class imbalance", (), "13", "dataset", _imbalance),
    ("Software versions", (23,), "18f (with the code)", "software", _software),
]

# (topic, CLAIM 2024 item numbers, TRIPOD+AI items): what only the authors know.
AUTHOR_ITEMS = [
    ("Title and abstract", (1, 2), "1, 2"),
    ("Clinical background, intended use and users", (3,), "3a, 3b"),
    ("Objectives and study design (retrospective or prospective; study goal)", (4, 5, 6), "4"),
    ("Setting, centres and dates of image acquisition", (7,), "5a, 5b, 6a"),
    ("Eligibility criteria of patients and images; selection of data subsets; consecutive or convenience series",
     (8, 10), "6b"),
    ("Reference standard (histopathology, immunohistochemistry) and who labelled the images", (14, 15, 16, 17, 18),
     "8a-8c"),
    ("Equipment and acquisition protocol (EUS scanner, frequency)", (13,), "9b"),
    ("De-identification of the images", (11,), "-"),
    ("Missing data and excluded cases before gistnet", (12,), "11"),
    ("Sample size rationale", (21,), "10"),
    ("Patient demographics and clinical characteristics per partition", (36,), "20b"),
    (HETEROGENEITY, (), "12d, 23b"),  # listed here only when the run did not compute it
    ("Health inequalities and fairness across patient groups", (), "3c, 14"),
    ("Robustness or sensitivity analysis (other scanners, operators, image quality)", (30,), "-"),
    ("External (independent) test set", (33,), "16"),
    ("Interpretation, limitations and implications for practice", (40, 41), "25, 26, 27a-27c"),
    ("Ethics approval and consent", (), "17"),
    ("Registration, protocol, funding, conflicts of interest", (34, 42, 44), "18a-18d"),
    ("Data, model and code availability", (43,), "18e, 18f"),
    ("Patient and public involvement", (), "19"),
]


def paths(topic: str, r: dict) -> list[str]:
    """The report.json paths of an item for report ``r``: ``models.<m>.<section>`` once per model
    that has the section (e.g. only the models whose Grad-CAM ran have ``explain``)."""
    spec = PATHS[topic]
    out = []
    for p in spec[_kind(r)] if isinstance(spec, dict) else spec:
        if "<m>" not in p:
            out.append(p)
            continue
        section = p.split(".")[2]
        out += [p.replace("<m>", m) for m, body in _models(r).items() if section in body]
    return out


def _anchor(template: str, r: dict) -> str:
    with_sites = [m for m, body in _models(r).items() if "sites" in body]
    return template.format(model=(with_sites or list(_models(r)))[0])


def markdown(r: dict) -> str:
    """The checklist for report ``r``."""
    filled = set()
    lines = [
        f"# Reporting checklist for gistnet run {r['run_id']}",
        "",
        "The items below that this run can fill are filled from its report; each points at the section of "
        "`report.html` (anchor) and the `report.json` field that holds the evidence. Items only the authors can "
        "fill are listed at the end: this checklist is not complete until they are.",
        "",
        REFERENCES,
        "",
        "## Filled by the job",
        "",
        "| item | CLAIM 2024 | TRIPOD+AI | what this run did | where |",
        "| --- | --- | --- | --- | --- |",
    ]
    for topic, numbers, tripod, anchor, fill in JOB_ITEMS:
        value = fill(r)
        if value is None:
            lines.append(f"| {topic} | {claim(*numbers)} | {tripod} | {NOT_COMPUTED} | - |")
            continue
        filled.add(topic)
        where = ", ".join(f"`{p}`" for p in paths(topic, r))
        lines.append(f"| {topic} | {claim(*numbers)} | {tripod} | {_cell(value)} | `report.html#{_anchor(anchor, r)}`, "
                     f"`report.json`: {where} |")
    lines += ["", "## To be filled by the authors", "", "| item | CLAIM 2024 | TRIPOD+AI |", "| --- | --- | --- |"]
    lines += [f"| {topic} | {claim(*numbers)} | {tripod} |" for topic, numbers, tripod in AUTHOR_ITEMS
              if topic not in filled]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
