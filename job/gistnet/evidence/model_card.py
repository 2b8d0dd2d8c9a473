"""``<model>/model_card.md``: a model card per trained model, in the sections of the
Hugging Face model card template (model details, intended use, training data,
preprocessing, training procedure, evaluation, limitations, how to reproduce), rendered
from the run's report so every number in it is the report's.

A k-fold (or leave-one-site-out) run's card describes the model as it is used: the ensemble of
its K fold models (the mean of their logit margins, as ``gistnet predict``, ``evaluate`` and
``export`` score it), with the median of the folds' Youden thresholds as the exploratory
threshold, and performance figures that are the pooled out-of-fold evaluation."""

from __future__ import annotations

import statistics

from gistnet.evidence import stats
from gistnet.evidence.report import interval_words, percent_with_ci

CARD = "model_card.md"


def is_ensemble(m: dict) -> bool:
    """A k-fold (or leave-one-site-out) model: one network per fold, no single checkpoint."""
    return "checkpoint" not in m and bool(m.get("folds"))


def ensemble_words(m: dict) -> str:
    """How a k-fold run's model is used, in one sentence."""
    k = len(m["folds"])
    youden = statistics.median(float(f["youden_threshold"]) for f in m["folds"])
    return (f"This model is used as an ensemble of its {k} fold models (mean logit margin): `gistnet predict`, "
            f"`evaluate` and `export` average the {k} fold networks' logit margins logit(positive) - logit(negative), "
            "and the probability is the sigmoid of that mean. The call uses the pre-specified threshold "
            f"{m.get('threshold', 0.5)}; the exploratory threshold is the median of the folds' Youden thresholds, "
            f"{youden:.3f}. Its performance figures are pooled out-of-fold: each image scored once, by the fold model "
            "that did not train on it (not by the ensemble, which has seen every image).")


def render(report: dict, name: str) -> str:
    m = report["models"][name]
    cfg = report["config"]
    sections = [_front_matter(report, name), _details(report, name, m), _intended_use(cfg),
                _training_data(report), _preprocessing(cfg), _training(cfg, m, name),
                _evaluation(m), _limitations(report, name, m), _reproduce(report, name)]
    return "\n".join(sections)


def _front_matter(report: dict, name: str) -> str:
    return "\n".join(["---", "library_name: pytorch", "pipeline_tag: image-classification",
                      "tags: [medical-imaging, endoscopic-ultrasound, gist, leiomyoma, resnet, research-only]",
                      f"model_name: gistnet-{name}-{report['run_id']}", "---", ""])


def _details(report: dict, name: str, m: dict) -> str:
    positive, negative = _classes(report)
    best = " It is the run's best model." if report["best_model"] == name else ""
    if is_ensemble(m):
        weights = [f"- Weights of fold {f['fold']}: `{f['checkpoint']['uri']}` (safetensors, sha256 "
                   f"`{f['checkpoint']['sha256']}`)" for f in m["folds"]]
        onnx = "writes one `model.onnx` of the ensemble under the run's `" + name + "/`"
    else:
        weights = [f"- Weights: `{m['checkpoint']['uri']}` (safetensors, sha256 `{m['checkpoint']['sha256']}`)"]
        onnx = "writes `model.onnx` beside the weights"
    return "\n".join([
        f"# gistnet {name}, run {report['run_id']}",
        "",
        "## Model details",
        "",
        f"torchvision {name} with {_head(report, positive, negative)}, trained by gistnet "
        f"{report['gistnet_version']} on {report['created']} ({report['environment']['device']}, torch "
        f"{report['environment']['torch']}).{best} It reproduces the protocol of Guo et al., Chin J Dig Endosc "
        "2024;41(6):449-454.",
        *(["", ensemble_words(m)] if is_ensemble(m) else []),
        "",
        *weights,
        f"- Input: one EUS still image; output: P({positive}), called {positive} at P >= {m.get('threshold', 0.5)}",
        "- ONNX: `gistnet export --run <run> --model " + name + "` " + onnx,
        "",
    ])


def _intended_use(cfg: dict) -> str:
    positive, negative = cfg["data"]["positive_class"], cfg["data"]["negative_class"]
    classes = cfg["data"].get("classes") or [positive, negative]
    if len(classes) > 2:
        return "\n".join([
            "## Intended use",
            "",
            f"Research: telling {len(classes)} subepithelial lesion types ({', '.join(classes)}) apart on endoscopic "
            f"ultrasound still images, with {positive} against every other class as the clinical endpoint, to study "
            "deep learning as a second opinion and to score archives for research.",
            "",
            "**Not for diagnosis.** Its output must not decide or change the care of a patient. It has not been "
            "validated on an independent test set, on other hospitals, scanners or probes, or prospectively. Out of "
            f"scope: other lesions or modalities (it always answers one of the {len(classes)} classes), video, images "
            "with annotations burnt in.",
            "",
        ])
    return "\n".join([
        "## Intended use",
        "",
        f"Research: telling {positive} (gastrointestinal stromal tumour) from {negative} (leiomyoma) on endoscopic "
        "ultrasound still images, to study deep learning as a second opinion and to score archives for research.",
        "",
        "**Not for diagnosis.** Its output must not decide or change the care of a patient. It has not been validated "
        "on an independent test set, on other hospitals, scanners or probes, or prospectively. Out of scope: other "
        "lesions or modalities (it always answers one of the two classes), video, images with annotations burnt in.",
        "",
    ])


def _training_data(report: dict) -> str:
    ds = report["dataset"]
    if "train" not in ds:  # k-fold, site: every image trains K-1 fold models and validates one
        split = report["config"]["split"]
        images = [f"- Images: {_counts(ds['images'])}, each in the validation part of one fold and the training "
                  f"part of the others ({split['method']}, {report['evaluation']['folds']} folds)"]
    else:
        images = [f"- Training images: {_counts(ds['train'])}; after augmentation ({ds.get('augmentation_mode')}): "
                  f"{_counts(ds['train_augmented'])}", f"- Validation images: {_counts(ds['val'])}"]
    return "\n".join([
        "## Training data",
        "",
        f"- Source: `{ds['uri']}`",
        *([f"- Data digest: `{ds['lineage']['digest']}` ({ds['lineage']['images']} images, "
           f"{ds['lineage']['skipped']} skipped; {ds['lineage']['method']}; per object in the run's `lineage.json`)"]
          if ds.get("lineage") else []),
        f"- Split: {ds['split_method']} (seed {report['config']['train']['seed']}"
        + (f", validation fraction {report['config']['split']['val_fraction']}" if "train" in ds else "")
        + "); the keys are in the run's `split.json`",
        *images,
        f"- Patients: {images_per_patient(ds)}",
        f"- Images skipped as unusable: {len(ds['skipped'])} (listed in `report.json`)",
        "",
    ])


def _preprocessing(cfg: dict) -> str:
    size = cfg["data"]["image_size"]
    return "\n".join([
        "## Preprocessing",
        "",
        "The same in training, `gistnet predict` and the ONNX file (both reuse the training code):",
        "",
        "1. Decode (PNG, JPEG, BMP, TIFF) to 8-bit RGB: 16-bit images are stretched over their used range, "
        "transparency is composed over black, grayscale is repeated over three channels.",
        f"2. Resize the shorter side to {size} px (bicubic) and centre-crop to {size} x {size}.",
        "3. Scale to [0, 1] and normalise with the ImageNet mean (0.485, 0.456, 0.406) and standard deviation "
        "(0.229, 0.224, 0.225).",
        "",
        f"The ONNX file takes step 2's output (uint8, N x 3 x {size} x {size}) and does step 3 itself. "
        f"Training augmentation: {cfg['augmentation']['mode']} (never applied when scoring).",
        "",
    ])


def _training(cfg: dict, m: dict, name: str) -> str:
    t = cfg["train"]
    histories = [f["history"] for f in m["folds"]] if is_ensemble(m) else [m["history"]]
    last = histories[0][-1]
    init = t["init_weights"].get(name)
    where = f"Fold {m['folds'][0]['fold']}'s last epoch" if is_ensemble(m) else "Last epoch"
    return "\n".join([
        "## Training procedure",
        "",
        f"{t['optimizer']} (learning rate {t['learning_rate']}, weight decay {t['weight_decay']}), cosine annealing, "
        f"cross-entropy, batch {t['batch_size']}, {len(histories[0])} epochs, seed {t['seed']}"
        + (f", once per fold ({len(histories)} fold models)" if is_ensemble(m) else "") + "; initial weights: "
        f"{f'`{init}`' if init else 'random (trained from scratch)'}. The final-epoch weights are "
        f"kept (no checkpoint picked on the validation set). {where}: training loss {last['train_loss']:.4f}, "
        f"validation loss {last['val_loss']:.4f}.",
        "",
    ])


_AUC_METHODS = {"delong": "DeLong normal", "hanley-mcneil": "Hanley-McNeil normal"}


def _evaluation(m: dict) -> str:
    cm = m["confusion_matrix"]
    level = m.get("confidence_level", 0.95)
    auc = m["roc_auc"]
    rows = [f"| {k} | {percent_with_ci(m['metrics'][k])} |" for k in stats.METRICS]
    if auc["value"] is not None:
        rows.append(f"| ROC AUC | {auc['value']:.3f} ({interval_words(auc)}) |")
    unit = m.get("unit_of_analysis", {}).get("text")
    where = (f"Pooled out-of-fold over the run's {len(m['folds'])} folds ({sum(cm.values())} images, each scored by "
             "the fold model that did not train on it)" if is_ensemble(m)
             else f"On the run's validation set ({sum(cm.values())} images)")
    return "\n".join([
        "## Evaluation",
        "",
        f"{where}, threshold {m.get('threshold', 0.5)}: "
        f"TP {cm['tp']}, FN {cm['fn']}, TN {cm['tn']}, FP {cm['fp']}.",
        "",
        f"| metric | value ({level:.0%} CI) |",
        "| --- | --- |",
        *rows,
        "",
        f"How the intervals are estimated: binomial {m['ci_method']} intervals (statsmodels) for the five "
        f"proportions; a {_AUC_METHODS.get(auc['method'], auc['method'])} interval for the ROC AUC. "
        "A metric with no cases is n/a." + (f" Unit of analysis: {unit}." if unit else ""),
        "",
    ])


def _limitations(report: dict, name: str, m: dict) -> str:
    n_val = sum(m["confusion_matrix"].values())
    selection = (report["selection"]["note"].capitalize() if report["best_model"] == name else
                 "The run picked its best model on this same validation set; this model's numbers are not an "
                 "independent test either")
    kind = "pooled out-of-fold evaluation" if is_ensemble(m) else "validation set"
    lines = [
        "## Limitations",
        "",
        f"- The {kind} is small ({n_val} images): the intervals above are wide, and they are the honest measure of "
        "what is known.",
        *(["- The pooled out-of-fold figures measure the fold models, each on images it did not train on; the "
           "ensemble itself has seen every image, so only new data (`gistnet evaluate`) measures it."]
          if is_ensemble(m) else []),
        f"- {selection}.",
        "- One data source: performance on other hospitals, scanners, frequencies or operators is unknown.",
        f"- Images per patient: {images_per_patient(report['dataset'])}.",
        f"- {measured_calibration(m)}",
        "- If the training data were synthetic (`gistnet synth`), this model says nothing about real patients.",
        "",
    ]
    return "\n".join(lines)


def images_per_patient(ds: dict) -> str:
    """Counted from the manifest's patient ids; "unknown" without them."""
    p = ds.get("patients")
    if not p:
        return ("unknown (no patient ids in a manifest): if a patient contributed several images, the images are "
                "not independent and the intervals above are too narrow")
    spread = (f"{p['median']:g} (median; range {p['min']}-{p['max']})" if p["max"] > 1 else "1 for every patient")
    return f"{spread} over {p['patients']} patients, counted from the manifest's patient ids"


def measured_calibration(m: dict) -> str:
    """The calibration of this run's validation predictions (Brier, calibration-in-the-large, slope)."""
    c = m.get("calibration")
    if not c:
        return "Calibration: not measured in this run."

    def num(v):
        return "n/a" if v is None else f"{v:.2f}"

    text = (f"Calibration on the validation predictions: Brier score {c['brier']:.3f}, "
            f"calibration-in-the-large {num(c.get('intercept'))} (ideal 0; above 0 the model under-predicts), "
            f"calibration slope {num(c.get('slope'))} (ideal 1; below 1 over-confident).")
    return text + (f" Note: {c['note']}." if c.get("note") else "")


def _reproduce(report: dict, name: str) -> str:
    run_id = report["run_id"]
    env = report["environment"]
    return "\n".join([
        "## How to reproduce",
        "",
        "With the run's saved `config.yaml` and the same data:",
        "",
        "```bash",
        f"gistnet train --config config.yaml --run-id {run_id}-repro --models {name}",
        "```",
        "",
        f"Trained with torch {env['torch']}, Python {env['python']}, on {env['device']}. On CPU a fixed seed gives "
        "bit-identical weights; on CUDA (bf16 autocast) results agree only statistically. Score new images with:",
        "",
        "```bash",
        f"gistnet predict --run <output>/{run_id} --model {name} --data <images> --output <predictions>",
        "```",
        "",
    ])


def _classes(report: dict) -> tuple[str, str]:
    classes = report["dataset"]["classes"]
    by_role = {role: name for name, role in classes.items()}
    return by_role["positive"], by_role.get("negative", f"non-{by_role['positive']}")


def _head(report: dict, positive: str, negative: str) -> str:
    """The head in words: two classes as always; K classes named, the endpoint stated."""
    classes = report["dataset"]["classes"]
    if len(classes) == 2:
        return f"a two-class head ({positive} positive, {negative} negative)"
    return (f"a {len(classes)}-class head ({', '.join(classes)}; the endpoint is {positive} against every other "
            f"class, P({positive}) the softmax mass of {positive})")


def _counts(counts: dict) -> str:
    return ", ".join(f"{n} {name}" for name, n in counts.items())
