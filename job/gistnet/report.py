"""The run's report: ``report.json`` (validated against the shipped JSON Schema) and plots."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from importlib import resources

import torch

import gistnet
from gistnet import stats


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


def build(run_id: str, config: dict, device: torch.device, dataset: dict, models: dict, selection_metric: str,
          artifacts: dict) -> dict:
    best = choose_best(models, selection_metric)
    report = {
        "schema_version": 1,
        "run_id": run_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "gistnet_version": gistnet.__version__,
        "status": "complete",
        "config": config,
        "environment": environment(device),
        "dataset": dataset,
        "models": models,
        "best_model": best,
        "selection": {
            "metric": f"validation {selection_metric}",
            "note": "chosen on the same validation set the metrics are reported on, as in the paper; "
                    "this is optimistic: confirm on an independent test set before clinical use",
        },
        "artifacts": artifacts,
    }
    validate(report)
    return report


def class_names(report: dict) -> tuple[str, str]:
    """(positive, negative) class names as configured, from ``dataset.classes``."""
    classes = report["dataset"]["classes"]
    return (next(n for n, role in classes.items() if role == "positive"),
            next(n for n, role in classes.items() if role == "negative"))


def summary(report: dict) -> str:
    """A few lines a clinician can read on the terminal."""
    positive, _ = class_names(report)
    lines = [f"run {report['run_id']}: best model {report['best_model']} ({positive} positive, validation set)"]
    for name, m in report["models"].items():
        auc = m["roc_auc"]["value"]
        cm = m["confusion_matrix"]
        lines.append(f"-- {name}: TP {cm['tp']} FN {cm['fn']} TN {cm['tn']} FP {cm['fp']}"
                     + (f", ROC AUC {auc:.3f}" if auc is not None else ""))
        lines.append(stats.format_table(m["metrics"]))
    return "\n".join(lines)


def _counts(counts: dict) -> str:
    return " / ".join(f"{n} {name}" for name, n in counts.items())


def percent_with_ci(m: dict) -> str:
    if m["value"] is None:
        return "n/a (no cases)"
    return (f"{m['value'] * 100:.2f}% ({m['numerator']}/{m['denominator']}), "
            f"{m['ci_low'] * 100:.2f}-{m['ci_high'] * 100:.2f}%")


def markdown(report: dict) -> str:
    """``report.md``: the report for a human reader, the configured positive class, validation set."""
    ds = report["dataset"]
    positive, negative = class_names(report)
    level = next(iter(report["models"].values())).get("confidence_level", 0.95)
    lines = [
        f"# gistnet run {report['run_id']}",
        "",
        f"Created {report['created']} by gistnet {report['gistnet_version']} on {report['environment']['device']}.",
        f"Data: `{ds['uri']}`; training {_counts(ds['train'])} (after {ds.get('augmentation_mode')} augmentation: "
        f"{_counts(ds['train_augmented'])}), validation {_counts(ds['val'])}; split: {ds['split_method']}; "
        f"{len(ds['skipped'])} image(s) skipped.",
        "",
        f"**Best model: {report['best_model']}** (by {report['selection']['metric']}). "
        f"{report['selection']['note'].capitalize()}.",
        "",
    ]
    for name, m in report["models"].items():
        cm = m["confusion_matrix"]
        auc = m["roc_auc"]
        last = m["history"][-1]
        lines += [
            f"## {name}",
            "",
            f"{len(m['history'])} epoch(s); last epoch: {last['images']} training images stepped, "
            f"train loss {last['train_loss']:.4f}, "
            f"validation loss {last['val_loss']:.4f}, validation accuracy {last['val_accuracy']:.3f}.",
            "",
            f"| | {positive} (truth) | {negative} (truth) |",
            "| --- | --- | --- |",
            f"| called {positive} | TP {cm['tp']} | FP {cm['fp']} |",
            f"| called {negative} | FN {cm['fn']} | TN {cm['tn']} |",
            "",
            f"| metric | value ({level:.0%} CI, {m['ci_method']}) |",
            "| --- | --- |",
        ]
        lines += [f"| {k} | {percent_with_ci(m['metrics'][k])} |" for k in stats.METRICS]
        if auc["value"] is not None:
            lines.append(f"| ROC AUC | {auc['value']:.3f}, {auc['ci_low']:.3f}-{auc['ci_high']:.3f} (Hanley-McNeil) |")
        lines += ["", f"Weights: `{m['checkpoint']['uri']}` (sha256 `{m['checkpoint']['sha256']}`)", ""]
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
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC, validation set")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
