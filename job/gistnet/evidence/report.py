"""The run's report: ``report.json`` (validated against the shipped JSON Schema) and plots."""

from __future__ import annotations

import json
import platform
from importlib import resources

import torch

import gistnet
from gistnet import plots
from gistnet.data.runs import unit_name
from gistnet.evidence import stats


def schema() -> dict:
    return json.loads(resources.files("gistnet").joinpath("schemas/report.schema.json").read_text())


def validate(report: dict) -> None:
    import jsonschema

    jsonschema.validate(report, schema(), format_checker=jsonschema.FormatChecker())


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    return {"torch": torch.__version__, "device": f"{device.type} ({name})", "python": platform.python_version(),
            "cuda": torch.version.cuda or "", "threads": torch.get_num_threads()}


def choose_best(models: dict, metric: str) -> str:
    """Highest validation ``metric`` (accuracy or roc_auc), ties broken by the other, then order."""
    def score(name):
        m = models[name]
        acc = m["metrics"]["accuracy"]["value"] or 0.0
        auc = m["roc_auc"]["value"] or 0.0
        return (acc, auc) if metric == "accuracy" else (auc, acc)
    return max(models, key=score)


SCHEMA_VERSION = 2


def build(run_id: str, config: dict, dataset: dict, models: dict, selection_metric: str, artifacts: dict, *,
          environment: dict, created: str, evaluation: dict, comparison: dict | None = None,
          status: str = "complete") -> dict:
    """The report from its parts; every input is stored data, so the same inputs give the same report."""
    best = choose_best(models, selection_metric)
    report = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "created": created,
        "gistnet_version": gistnet.__version__,
        "status": status,
        "config": config,
        "environment": environment,
        "dataset": dataset,
        "evaluation": evaluation,
        "models": models,
        "comparison": comparison,
        "best_model": best,
        "selection": {
            "metric": f"{'pooled out-of-fold' if evaluation['pooled'] else 'validation'} {selection_metric}",
            "note": "chosen on the same validation predictions the metrics are reported on, as in the paper; "
                    "this is optimistic: confirm on an independent test set before clinical use",
        },
        "artifacts": artifacts,
    }
    describe(report)
    validate(report)
    return report


def class_names(report: dict) -> tuple[str, str]:
    """(positive, negative) class names as configured, from ``dataset.classes``; with K classes
    the endpoint's other side is ``non-<positive>`` (``DataConfig.endpoint_classes``)."""
    classes = report["dataset"]["classes"]
    positive = next(n for n, role in classes.items() if role == "positive")
    return positive, next((n for n, role in classes.items() if role == "negative"), f"non-{positive}")


def summary(report: dict) -> str:
    """A few lines a clinician can read on the terminal."""
    positive, _ = class_names(report)
    where = "pooled out-of-fold" if report["evaluation"]["pooled"] else "validation set"
    lines = [f"run {report['run_id']} ({report['status']}): best model {report['best_model']} "
             f"({positive} positive, {where})"]
    for name, m in report["models"].items():
        auc = m["roc_auc"]
        cm = m["confusion_matrix"]
        lines.append(f"-- {name}: TP {cm['tp']} FN {cm['fn']} TN {cm['tn']} FP {cm['fp']}"
                     + (f", ROC AUC {auc['value']:.3f} ({interval_words(auc)})" if auc["value"] is not None else ""))
        if m.get("unit_of_analysis"):
            lines.append(f"   unit of analysis: {m['unit_of_analysis']['text']}")
        lines.append(stats.format_table(m["metrics"]))
    if report.get("comparison"):
        lines += report["comparison"]["interpretation"]
    return "\n".join(lines)


def _counts(counts: dict) -> str:
    return " / ".join(f"{n} {name}" for name, n in counts.items())


def percent_with_ci(m: dict) -> str:
    if m["value"] is None:
        return "n/a (no cases)"
    if m["ci_low"] is None:
        return (f"{m['value'] * 100:.2f}% ({m['numerator']}/{m['denominator']}), "
                f"interval n/a ({m.get('note', 'not estimable')})")
    return (f"{m['value'] * 100:.2f}% ({m['numerator']}/{m['denominator']}), "
            f"{m['ci_low'] * 100:.2f}-{m['ci_high'] * 100:.2f}%")


def interval_words(m: dict, fmt: str = ".3f") -> str:
    """The bounds of an interval ("0.672 to 0.995"), or "interval n/a (reason)"."""
    if m.get("ci_low") is None or m.get("ci_high") is None:
        return f"interval n/a ({m.get('note', 'not estimable')})"
    return stats.interval_text(m["ci_low"], m["ci_high"], fmt)


def auc_text(auc: dict) -> str:
    """ROC AUC with its interval and method, or n/a with the reason."""
    if auc["value"] is None:
        return f"n/a ({auc.get('note', 'one class only')})"
    return f"{auc['value']:.3f}, {interval_words(auc)} ({auc['method']})"


def _num(value, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


CAVEAT = "Research software: this report is {what} of a model, not a diagnosis. {then}"
CONFIRM = "Confirm any model on an independent test set before clinical use."


def words(report: dict) -> dict:
    """The title, the evaluation design and the caveat of a report, in words of its own evaluation
    kind (hold-out, k-fold, leave-one-site-out, external); every format (json, md, html) uses these."""
    ev, ds = report.get("evaluation") or {}, report["dataset"]
    method = "external" if ev.get("kind") == "external" else ev.get("method", "holdout")
    title = f"gistnet run {report['run_id']}"
    if method == "external":
        ext = report.get("external", {})
        counts = ext.get("counts", {})
        title = f"External evaluation {ext.get('name', '')} of run {report['run_id']}"
        design = (f"External evaluation: {counts.get('evaluated', '?')} images from `{ds['uri']}`, none used to develop "
                  f"run {report['run_id']}, scored by its trained models; thresholds frozen, no model or threshold "
                  f"chosen on these images ({counts.get('scored', '?')} scored, "
                  f"{counts.get('excluded_development', 0)} development images or patients and "
                  f"{counts.get('excluded_repeats', 0)} repeats excluded).")
        caveat = CAVEAT.format(what="an external evaluation", then=(
            "These images are independent of the model's development; before clinical use, check that they "
            "represent the patients, centres and scanners of the intended use."))
    elif method == "site":
        design = (f"Leave-one-site-out (internal-external) cross-validation over {ev['folds']} sites: each fold "
                  "trains on all sites but one and validates on the held-out site. The metrics below pool these "
                  "out-of-fold predictions; the per-site table and the random-effects meta-analysis show how "
                  "much performance varies between sites.")
        caveat = CAVEAT.format(what="an internal-external (leave-one-site-out) cross-validation", then=(
            "Each site was validated by models that never saw it; the deployed model is trained on every site. "
            + CONFIRM))
    elif method == "kfold":
        design = (f"{ev['folds']}-fold cross-validation ({ds['split_method']}): every image is validated once, "
                  "by the models of the fold that did not train on it. The metrics below pool these out-of-fold "
                  "predictions over all images; their intervals come from the pooled predictions, the mean and "
                  "SD across folds show the spread between folds.")
        caveat = CAVEAT.format(what="a cross-validation audit", then=CONFIRM)
    else:
        design = f"Hold-out validation set ({ds['split_method']})" + (
            f": training {_counts(ds['train'])} (after {ds.get('augmentation_mode')} augmentation: "
            f"{_counts(ds['train_augmented'])}), validation {_counts(ds['val'])}." if "train" in ds else ".")
        caveat = CAVEAT.format(what="a validation-set audit", then=CONFIRM)
    return {"kind": method, "title": title, "design": design, "caveat": caveat}


def describe(report: dict) -> dict:
    """``report`` with ``evaluation.design`` and ``evaluation.caveat`` (report.json's words for its kind)."""
    w = words(report)
    report["evaluation"].update(design=w["design"], caveat=w["caveat"])
    return report


def _evaluation_lines(report: dict) -> list[str]:
    ev = report["evaluation"]
    w = words(report)
    lines = ["## Evaluation", "", w["design"], "", w["caveat"]]
    if ev["missing"]:
        lines += ["", "**PARTIAL REPORT: these (fold, model) units have not finished and are not in any number "
                  "below: " + ", ".join(unit_name(u) for u in ev["missing"]) + ".**"]
    return lines + [""]


def _model_lines(name: str, m: dict, level: float, positive: str, negative: str) -> list[str]:
    cm, auc = m["confusion_matrix"], m["roc_auc"]
    lines = [f"## {name}", ""]
    if "history" in m:
        last = m["history"][-1]
        lines += [f"{len(m['history'])} epoch(s); last epoch: {last['images']} training images stepped, "
                  f"train loss {last['train_loss']:.4f}, "
                  f"validation loss {last['val_loss']:.4f}, validation accuracy {last['val_accuracy']:.3f}.", ""]
    lines += [
        f"| | {positive} (truth) | {negative} (truth) |",
        "| --- | --- | --- |",
        f"| called {positive} | TP {cm['tp']} | FP {cm['fp']} |",
        f"| called {negative} | FN {cm['fn']} | TN {cm['tn']} |",
        "",
        f"| metric | value ({level:.0%} CI, {m['ci_method']}) |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {percent_with_ci(m['metrics'][k])} |" for k in stats.METRICS]
    lines.append(f"| ROC AUC | {auc_text(auc)} |")
    if m.get("unit_of_analysis"):
        lines += ["", f"Unit of analysis: {m['unit_of_analysis']['text']}."]
    lines += [""] + _calibration_lines(m["calibration"]) + _threshold_lines(m["thresholds"])
    if "folds" in m:
        lines += _fold_lines(m)
    if "checkpoint" in m:
        lines += [f"Weights: `{m['checkpoint']['uri']}` (sha256 `{m['checkpoint']['sha256']}`)", ""]
    return lines


def _calibration_lines(c: dict) -> list[str]:
    lines = ["### Calibration", "", calibration_sentence(c)]
    if c["note"]:
        lines.append(f"Note: {c['note']}.")
    return lines + [""]


def calibration_sentence(c: dict) -> str:
    """Brier score, calibration-in-the-large and slope, saying which intercept it is."""
    text = (f"Brier score {c['brier']:.3f} (0 is perfect; 0.25 is what always answering 50% scores); "
            f"calibration-in-the-large {_num(c['intercept'], '.2f')} (the intercept with the slope fixed at 1; "
            f"ideal 0, above 0: under-predicts), calibration slope {_num(c['slope'], '.2f')} (joint logistic fit; "
            f"ideal 1, below 1: over-confident), by {c['method']}.")
    return text + (f" References: {c['citation']}." if c.get("citation") else "")


def _threshold_lines(t: dict) -> list[str]:
    p, y = t["primary"], t["youden"]
    values = ", ".join(f"{v:.3f}" for v in y["values"])

    def row(label, section):
        cm, mt = section["confusion_matrix"], section["metrics"]
        return (f"| {label} | TP {cm['tp']} FN {cm['fn']} TN {cm['tn']} FP {cm['fp']} | "
                f"{percent_with_ci(mt['sensitivity'])} | {percent_with_ci(mt['specificity'])} |")

    return ["### Thresholds", "",
            "| threshold | confusion | sensitivity | specificity |", "| --- | --- | --- | --- |",
            row(f"{p['value']} (primary, pre-specified)", p), row(f"Youden {values} (exploratory)", y), "",
            f"The Youden threshold is exploratory: chosen by {y['chosen_on']}.", ""]


def _fold_lines(m: dict) -> list[str]:
    lines = ["### Folds", "", "| fold | images | epochs | ROC AUC | accuracy | sensitivity | specificity |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for f in m["folds"]:
        lines.append(f"| {f['fold']} | {f['n']} | {len(f['history'])} | {_num(f['roc_auc'])} | {_num(f['accuracy'])} | "
                     f"{_num(f['sensitivity'])} | {_num(f['specificity'])} |")
    a = m["across_folds"]
    lines.append("| mean (SD) | | | " + " | ".join(f"{_num(a[k]['mean'])} ({_num(a[k]['sd'])})"
                                                  for k in ("roc_auc", "accuracy", "sensitivity", "specificity"))
                 + " |")
    return lines + [""]


def _comparison_lines(c: dict | None) -> list[str]:
    if not c:
        return []
    first, second = c["models"]
    d, diff, mc = c["delong"], c["auc_difference"], c["mcnemar"]
    lines = ["## Comparison", "",
             f"{first} vs {second} on the same {c['n_images']} images"
             + (f" ({c['unit_of_analysis']['text']})" if c.get("unit_of_analysis") else "") + ".", "",
             "| test | result |", "| --- | --- |",
             f"| ROC AUC difference ({first} - {second}) | {diff['value']:+.3f}, {c['confidence_level']:.0%} CI "
             f"{interval_words(diff, '+.3f')} ({diff['method']}) |",
             f"| DeLong's test ({d.get('method', 'delong')}) | z {_num(d['z'], '.2f')}, p {_num(d['p'], '.3g')}"
             + (f" ({d['note']})" if d.get("note") else "") + " |",
             f"| McNemar's test, {mc.get('method', 'exact (binomial)')} (0.5 threshold) | {mc['only_first_correct']} "
             f"images only {first} got right, {mc['only_second_correct']} only {second}; p {mc['p']:.3g} |"]
    if c.get("mcnemar_multiclass"):
        m = c["mcnemar_multiclass"]
        lines.append(f"| McNemar's test on the multi-class call, {m.get('method', 'exact (binomial)')} (most probable "
                     f"class) | {m['only_first_correct']} images only {first} got right, {m['only_second_correct']} "
                     f"only {second}; p {m['p']:.3g} |")
    lines.append("")
    return lines + [f"- {text}" for text in c["interpretation"]] + [""]


def markdown(report: dict) -> str:
    """``report.md``: the report for a human reader, the configured positive class."""
    ds = report["dataset"]
    positive, negative = class_names(report)
    level = next(iter(report["models"].values())).get("confidence_level", 0.95)
    status = "" if report["status"] == "complete" else f" ({report['status'].upper()})"
    lines = [
        f"# {words(report)['title']}{status}",
        "",
        f"Created {report['created']} by gistnet {report['gistnet_version']} on {report['environment']['device']}.",
        f"Data: `{ds['uri']}`; split: {ds['split_method']}; {len(ds['skipped'])} image(s) skipped.",
        *(["", f"No figure of image pixels (augmentation examples, Grad-CAM): {ds['figures_withheld']}."]
          if ds.get("figures_withheld") else []),
        "",
        f"**Best model: {report['best_model']}** (by {report['selection']['metric']}). "
        f"{report['selection']['note'].capitalize()}.",
        "",
    ]
    lines += _evaluation_lines(report)
    for name, m in report["models"].items():
        lines += _model_lines(name, m, level, positive, negative)
    lines += _comparison_lines(report.get("comparison"))
    from gistnet.evidence import sections  # sites, subgroups, decision curve (issue 21)

    lines += [sections.markdown(report)]
    from gistnet.evidence import kclasses  # K classes, by image and by lesion (issue 27)

    lines += [kclasses.markdown(report)]
    if ds["skipped"]:
        lines += ["## Skipped images", ""] + [f"- `{s['uri']}`: {s['reason']}" for s in ds["skipped"]] + [""]
    lines += [f"Sensitivity: {positive} cases called {positive}. PPV: {positive} calls that are {positive}. "
              "Intervals with a zero denominator are n/a. Wald intervals (the paper's) are unreliable below n = 30; "
              "Wilson is the default.", ""]
    return "\n".join(lines)


def training_curves(histories: dict[str, list[dict]], path) -> None:
    """Loss and accuracy per epoch for every model, like the paper's Fig 3/4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for name, history in histories.items():
        epochs = [h["epoch"] for h in history]
        for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            line, = ax.plot(epochs, [h[f"train_{key}"] for h in history], label=f"{name} train")
            ax.plot(epochs, [h[f"val_{key}"] for h in history], "--", color=line.get_color(), label=f"{name} validation")
    for ax, title in ((ax_loss, "cross-entropy loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_acc.set_ylim(0, 1.02)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def roc_figure(curves: dict[str, dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, c in curves.items():
        if c["curve"]["fpr"]:
            ax.plot(c["curve"]["fpr"], c["curve"]["tpr"], label=f"{name} (AUC {c['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    plots.save_plot(fig, ax, path, "ROC, validation set", "1 - specificity", "sensitivity", "lower right")
