"""A model's K-class and by-lesion evidence, from its ``predictions.csv`` rows alone.

``report.json`` gets, per model, a ``multiclass`` object (``multiclass.summary``: the K x K
confusion matrix, one-vs-rest metrics and AUCs, macro AUC, accuracy, balanced accuracy,
unweighted kappa, Brier) and a ``by_lesion`` object: the endpoint (positive vs every other
class) scored per lesion in the shape of the by-image evidence (``evaluate.diagnostic_report``).
A lesion's score is the mean of its images' logits per class, then the softmax
(``lesions.RULE``); the logits are recovered from the ``p_<class>`` columns as log P (a
softmax is unchanged by a constant added to every logit, so the mean of log P per class gives
the same lesion softmax as the mean of the logits). The threshold is the pre-specified 0.5 on
P(positive), the one the by-image evidence uses, applied to lesions as it is (never re-tuned
on lesions). ``lesions.csv`` lists every lesion's scores and call, so both can be recomputed.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from gistnet import plots
from gistnet.evidence import evaluate, lesions, multiclass

LESIONS_FILE = "lesions.csv"
THRESHOLD_NOTE = ("the pre-specified threshold 0.5 on P(positive), chosen for images, applied to each lesion's "
                  "P(positive) as it is (not re-tuned on lesions)")


def logits_of(rows, head: tuple[str, ...]) -> np.ndarray:
    """N x K log-probabilities from the rows' ``p_<class>`` columns, in ``head`` order."""
    p = np.array([[dict(r.class_probabilities)[c] for c in head] for r in rows], dtype=np.float64)
    return np.log(np.clip(p, 1e-300, None))


def called_right(rows) -> np.ndarray | None:
    """Per row: is the most probable class (``p_<class>`` columns) the row's label; None without them."""
    if not rows or not all(r.class_probabilities for r in rows):
        return None
    return np.array([max(r.class_probabilities, key=lambda pair: pair[1])[0] == r.label for r in rows])


def sections(rows, head: tuple[str, ...], ci_method: str, level: float, seed: int = 0) -> tuple[dict, dict, list]:
    """(``multiclass``, ``by_lesion``, lesion table rows) of one model's rows (each with ``p_<class>``).

    ``head`` is ``data.head_classes`` (the positive class last); labels are the rows' class names."""
    rows = sorted(rows, key=lambda r: r.key)
    index = {c: i for i, c in enumerate(head)}
    labels = np.array([index[r.label] for r in rows], dtype=int)
    z = logits_of(rows, head)
    patients = [r.patient_id for r in rows]
    positive = len(head) - 1
    summary = multiclass.summary(labels, z, head, ci_method, level, clusters=patients, seed=seed)
    ids, source = lesions.lesion_ids([r.key for r in rows], patients, [r.lesion_id for r in rows])
    found = lesions.aggregate(z, labels, ids, patients, source)
    p, margin = multiclass.endpoint(found.logits, positive)
    truth = (found.labels == positive).astype(int)
    by_lesion = evaluate.diagnostic_report(truth, p, ci_method, level, 0.5, scores=margin,
                                           clusters=found.patients if any(found.patients) else None)
    by_lesion.update({"lesions": len(found.ids), "images": int(found.images.sum()), "lesion_ids_from": source,
                      "rule": lesions.RULE, "threshold_note": THRESHOLD_NOTE})
    return summary, by_lesion, _lesion_rows(found, head)


def lesion_table(keys, patients, lesion_ids, probabilities, labels, head: tuple[str, ...]) -> list[dict]:
    """Per-lesion rows from per-image P(class) (head order) and class names (``labels``; None
    when the images are unlabelled: each lesion's ``label`` is then empty)."""
    z = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-300, None))
    ids, source = lesions.lesion_ids(list(keys), list(patients), list(lesion_ids))
    index = [head.index(name) for name in labels] if labels is not None else [0] * len(ids)
    return _lesion_rows(lesions.aggregate(z, index, ids, list(patients), source), head, labelled=labels is not None)


def _lesion_rows(found: lesions.Lesions, head: tuple[str, ...], labelled: bool = True) -> list[dict]:
    """lesions.csv's rows: each lesion's ids, label, image count, P(class) in head order and call."""
    probs = multiclass.probabilities(found.logits)
    return [{"lesion_id": lid, "patient_id": pid, "label": head[y] if labelled else "", "images": int(n),
             **{f"p_{c}": float(v) for c, v in zip(head, row)}, "call": head[int(np.argmax(row))]}
            for lid, pid, y, n, row in zip(found.ids, found.patients, found.labels, found.images, probs)]


def lesions_csv(tables: dict[str, list[dict]]) -> bytes:
    """``lesions.csv``: one row per (model, lesion): lesion_id, patient_id, model, label, images,
    p_<class> (head order) and the call (the most probable class)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = None
    for model, table in tables.items():
        for row in table:
            if header is None:
                header = ["lesion_id", "patient_id", "model", "label", "images",
                          *(k for k in row if k.startswith("p_")), "call"]
                writer.writerow(header)
            writer.writerow([row["lesion_id"], row["patient_id"], model, row["label"], row["images"],
                             *(repr(row[k]) for k in header if k.startswith("p_")), row["call"]])
    return buffer.getvalue().encode()


def _value(entry) -> str:
    if isinstance(entry, dict):
        value, low, high = entry.get("value"), entry.get("ci_low"), entry.get("ci_high")
        if value is None:
            return "n/a"
        if low is None or high is None:
            return f"{value:.3f} (interval n/a)"
        joint = " to " if low < 0 else "-"  # "-0.044-0.357" would read as a range of negatives
        return f"{value:.3f} ({low:.3f}{joint}{high:.3f})"
    return "n/a" if entry is None else f"{entry:.3f}"


def _class_row(name: str, mc: dict) -> str:
    row = mc["per_class"][name]
    cal = row.get("calibration") or {}
    return (f"| {name} | {row.get('images', 'n/a')} | {_value(mc['auc_ovr'][name])} | "
            + " | ".join(_value(row[m]) for m in ("sensitivity", "specificity", "ppv", "npv"))
            + f" | {_value(cal.get('intercept'))} | {_value(cal.get('slope'))} |")


def markdown(report: dict) -> str:
    """The confusion matrix and the by-image / by-lesion table of every model that has them."""
    lines = []
    for name, m in report["models"].items():
        mc, bl = m.get("multiclass"), m.get("by_lesion")
        if not mc:
            continue
        classes = mc["classes"]
        if len(classes) == 2:  # the endpoint is the classification: only the by-lesion column is new
            lines += [f"## {name}: by image and by lesion", ""] + (_lesion_lines(m, bl) if bl else []) + [""]
            continue
        lines += [f"## {name}: the {len(classes)} classes", "",
                  "Confusion matrix (rows: true class, columns: predicted, the most probable class):", "",
                  "| true \\ predicted | " + " | ".join(classes) + " |",
                  "| --- |" + " --- |" * len(classes)]
        lines += [f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(classes, mc["confusion"])]
        lines += ["", f"Accuracy {_value(mc['accuracy'])}, balanced accuracy {_value(mc['balanced_accuracy'])}, "
                      f"Cohen's kappa (unweighted: the classes are not ordered) {_value(mc['kappa'])}, "
                      f"macro one-vs-rest AUC {_value(mc['macro_auc'])}, multi-class Brier {mc['brier']:.3f}.", "",
                  "| class | images | one-vs-rest AUC | sensitivity | specificity | PPV | NPV | calibration "
                  "intercept | calibration slope |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [_class_row(c, mc) for c in classes]
        lines += ["", "One-vs-rest: each class against every other; calibration of P(class) on its logit "
                      "(calibration-in-the-large and slope, Van Calster 2016)."]
        if bl:
            lines += [""] + _lesion_lines(m, bl)
        lines.append("")
    return "\n".join(lines)


def _lesion_lines(m: dict, bl: dict) -> list[str]:
    lines = [f"The endpoint by image and by lesion ({bl['lesions']} lesions from {bl['images']} images, "
             f"lesion ids from {bl['lesion_ids_from']}; {bl['rule']}; {bl['threshold_note']}):", "",
             "| | by image | by lesion |", "| --- | --- | --- |",
             f"| ROC AUC | {_value(m['roc_auc'])} | {_value(bl['roc_auc'])} |"]
    return lines + [f"| {metric} | {_value(m['metrics'][metric])} | {_value(bl['metrics'][metric])} |"
                    for metric in ("accuracy", "sensitivity", "specificity", "ppv", "npv")]


def confusion_figure(models: dict, path) -> None:
    """One row-normalised confusion matrix per model, with the counts written in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: F811 - after the backend is chosen

    shown = {n: m["multiclass"] for n, m in models.items() if m.get("multiclass")}
    fig, axes = plt.subplots(1, len(shown), figsize=(4.5 * len(shown), 4), squeeze=False)
    for ax, (name, mc) in zip(axes[0], shown.items()):
        classes, counts = mc["classes"], np.array(mc["confusion"])
        ax.imshow(np.array(mc["confusion_normalised"]), vmin=0, vmax=1, cmap="Blues")
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=9)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name} (row-normalised; counts)")
    plots.save_figure(fig, path)
