"""``checklist.md``: the CLAIM 2024 and TRIPOD+AI items a run can fill, from its report.

Each item the job can fill says what the run did and points at the report section
(``report.html#<id>`` and the ``report.json`` path). The items only the authors can fill
(clinical context, reference standard, ethics, ...) are listed as such, so the checklist
is never presented as complete.
"""

from __future__ import annotations

from typing import Callable

REFERENCES = ("CLAIM 2024: Tejani et al., Radiol Artif Intell 2024;6(4):e240300 (items named by topic). "
              "TRIPOD+AI: Collins et al., BMJ 2024;385:e078378 (item numbers). "
              "Check the wording and numbering against the form your journal asks for.")


def _models(r: dict) -> dict:
    return r["models"]


def _config(r: dict, section: str) -> dict:
    return r.get("config", {}).get(section, {})


def _counts(counts: dict) -> str:
    return ", ".join(f"{n} {name}" for name, n in counts.items())


def _ci(m: dict) -> str:
    if m.get("value") is None:
        return "n/a"
    return f"{m['value']:.3f} ({m['ci_low']:.3f}-{m['ci_high']:.3f})"


def _data_source(r):
    return f"images read from `{r['dataset']['uri']}`; classes {_counts(r['dataset']['classes'])}"


def _counts_item(r):
    ds = r["dataset"]
    used = (f"training {_counts(ds['train'])}; validation {_counts(ds['val'])}" if "train" in ds
            else f"{_counts(ds['images'])}, each validated once across the folds")
    return f"{used}; {len(ds['skipped'])} image(s) skipped, each listed with its reason"


def _split(r):
    text = f"{r['dataset']['split_method']}, stratified by class, seed {_config(r, 'train').get('seed')}"
    evaluation = r.get("evaluation")
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
    if ev.get("method") != "kfold":
        return None
    missing = ev.get("missing") or []
    return (f"{ev['folds']}-fold cross-validation, metrics pooled over the out-of-fold predictions, mean and SD across "
            "folds per model" + (f"; {len(missing)} unit(s) missing (report partial)" if missing else ""))


def _metrics(r):
    parts = []
    for name, m in _models(r).items():
        level = m.get("confidence_level", 0.95)
        parts.append(f"{name}: sensitivity {_ci(m['metrics']['sensitivity'])}, specificity "
                     f"{_ci(m['metrics']['specificity'])}, ROC AUC {_ci(m['roc_auc'])} ({level:.0%} CI, "
                     f"{m['ci_method']}; AUC {m['roc_auc']['method']})")
    return "; ".join(parts)


def _calibration(r):
    found = {n: m["calibration"] for n, m in _models(r).items() if m.get("calibration")}
    if not found:
        return None
    return "; ".join(f"{n}: " + ", ".join(f"{k} {_ci(v) if isinstance(v, dict) else f'{v:.3g}'}" for k, v in c.items()
                                          if isinstance(v, (int, float, dict)) and not isinstance(v, bool))
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


NOT_COMPUTED = "not in this report (this gistnet version or configuration does not compute it)"

# (topic, CLAIM 2024 topic, TRIPOD+AI item, report.html anchor, report.json path, filler)
JobItem = tuple[str, str, str, str, str, Callable[[dict], str | None]]
JOB_ITEMS: list[JobItem] = [
    ("Data source", "Data sources", "5a", "dataset", "dataset.uri", _data_source),
    ("Counts", "Flow of data / cases in each partition", "20a, 21", "dataset", "dataset.train, dataset.val",
     _counts_item),
    ("Split", "How data were assigned to partitions; level at which they are disjoint", "12a", "dataset",
     "dataset.split_method, evaluation", _split),
    ("Preprocessing", "Data preprocessing steps", "7", "software", "config.data", _preprocessing),
    ("Augmentation", "Data preprocessing; training details", "7, 12c", "fig-augmentation_examples",
     "dataset.train_augmented, config.augmentation", _augmentation),
    ("Model", "Detailed description of the model; initialisation of model parameters", "12c", "software",
     "config.train.models, config.train.init_weights", _model),
    ("Training", "Details of the training approach", "12c", "fig-training_curves", "models.<m>.history, config.train",
     _training),
    ("Selection of the final model", "Method of selecting the final model", "12c", "summary", "best_model, selection",
     _selection),
    ("Cross-validation", "Robustness or sensitivity analysis", "12a, 23b", "evaluation", "evaluation, models.<m>.folds",
     _folds),
    ("Metrics with confidence intervals", "Metrics of model performance; estimates of diagnostic accuracy and their "
     "precision", "12e, 23a", "summary", "models.<m>.metrics, models.<m>.roc_auc", _metrics),
    ("Calibration", "Metrics of model performance", "12e, 23a", "model-{model}-calibration", "models.<m>.calibration",
     _calibration),
    ("Comparison of the models", "Statistical measures of significance and uncertainty", "12e", "comparison",
     "comparison", _comparison),
    ("Model output and thresholds", "Metrics of model performance", "15", "model-{model}-confusion",
     "models.<m>.threshold, models.<m>.thresholds", _thresholds),
    ("Explainability", "Methods for explainability or interpretability", "-", "model-{model}-explain",
     "models.<m>.explain", _explain),
    ("Failure analysis", "Failure analysis of incorrectly classified cases", "-", "model-{model}-confusion",
     "models.<m>.confusion_matrix, gradcam-<m>.png", _failures),
    ("Class imbalance", "-", "13", "dataset", "dataset.train", _imbalance),
    ("Software versions", "Software libraries, frameworks and packages", "18f (with the code)", "software",
     "environment, gistnet_version", _software),
]

# (topic, CLAIM 2024 topic, TRIPOD+AI item): what only the authors know.
AUTHOR_ITEMS = [
    ("Title and abstract", "Title; abstract", "1, 2"),
    ("Clinical background, intended use and users", "Background; intended use and clinical role", "3a, 3b"),
    ("Objectives and study design (retrospective or prospective; study goal)", "Study objectives; study design", "4"),
    ("Setting, centres and dates of image acquisition", "Data sources (setting, dates)", "5b, 6a"),
    ("Eligibility criteria of patients and images; consecutive or convenience series", "Eligibility criteria", "6b"),
    ("Reference standard (histopathology, immunohistochemistry) and who labelled the images",
     "Reference standard; annotators; annotation tools; inter-rater variability", "8a-8c"),
    ("Equipment and acquisition protocol (EUS scanner, frequency)", "Image acquisition", "5a"),
    ("De-identification of the images", "De-identification methods", "-"),
    ("Missing data and excluded cases before gistnet", "Missing data", "11"),
    ("Sample size rationale", "Intended sample size", "10"),
    ("Patient demographics and clinical characteristics per partition", "Demographic and clinical characteristics",
     "20b"),
    ("Health inequalities and fairness across patient groups", "-", "3c, 14"),
    ("External (independent) test set", "Evaluation on external data", "-"),
    ("Interpretation, limitations and implications for practice", "Limitations; implications for practice", "25-27"),
    ("Ethics approval and consent", "-", "17"),
    ("Registration, protocol, funding, conflicts of interest", "Registration; protocol; funding", "18a-18d"),
    ("Data and code availability", "Availability of data and code", "18e, 18f"),
    ("Patient and public involvement", "-", "19"),
]


def _anchor(template: str, r: dict) -> str:
    return template.format(model=next(iter(_models(r))))


def markdown(r: dict) -> str:
    """The checklist for report ``r``."""
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
    for topic, claim, tripod, anchor, path, fill in JOB_ITEMS:
        value = fill(r)
        text = value if value is not None else NOT_COMPUTED
        lines.append(f"| {topic} | {claim} | {tripod} | {_cell(text)} | `report.html#{_anchor(anchor, r)}`, "
                     f"`report.json`: `{path}` |")
    lines += ["", "## To be filled by the authors", "", "| item | CLAIM 2024 | TRIPOD+AI |", "| --- | --- | --- |"]
    lines += [f"| {topic} | {claim} | {tripod} |" for topic, claim, tripod in AUTHOR_ITEMS]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
