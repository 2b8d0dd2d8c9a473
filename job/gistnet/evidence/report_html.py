"""``report.html``: the whole report in one self-contained file.

Everything ``report.md`` has, plus every figure embedded as a ``data:`` URI. The page makes
no request of its own (a Content-Security-Policy forbids any), carries no JavaScript and
prints readably. The template is package data (``templates/report.html.j2``), rendered by
Jinja2 with autoescaping, so text from the data set (file names, class names) cannot inject
markup.
"""

from __future__ import annotations

import base64
import math

import yaml

from gistnet.evidence import report as report_module
from gistnet.evidence import stats

# Figures of a run, in the order the page shows them, with a caption each.
FIGURE_CAPTIONS = {
    "training_curves": "Loss and accuracy per epoch, training and validation (the paper's Fig 3/4).",
    "roc": "ROC curves on the validation images (sensitivity against 1 - specificity).",
    "augmentation_examples": "Training images and their augmented copies (the paper's Fig 2).",
    "reliability_diagram": "Reliability diagram: observed share of positives against the predicted probability "
                           "(the diagonal is perfect calibration).",
    "confusion": "Confusion matrix of each model (rows: true class, columns: the most probable class), "
                 "row-normalised, with the counts.",
    "decision_curve": "Decision curve: net benefit of each model against treating all and treating none; "
                      "the model helps at the thresholds where its curve lies above both.",
}


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("gistnet", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=percent, num=number, pvalue=p_value, datauri=png_data_uri, label=label, sentence=sentence,
                       unit=report_module.unit_name, interval=report_module.interval_words,
                       auc=report_module.auc_text, calibration=report_module.calibration_sentence)
    return env


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def percent(m: dict) -> str:
    return report_module.percent_with_ci(m)


def number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def p_value(p) -> str:
    if p is None:
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def sentence(text: str) -> str:
    """First letter upper case, the rest untouched (Jinja's ``capitalize`` lowercases it)."""
    return text[:1].upper() + text[1:]


def label(key: str) -> str:
    return key.replace("_", " ")


def render(report: dict, figures: dict[str, bytes]) -> str:
    """The HTML page for ``report`` with ``figures`` (artifact name -> PNG bytes) embedded."""
    models = report["models"]
    level = next(iter(models.values())).get("confidence_level", 0.95)
    per_model = {name: {k: figures[k] for k in sorted(figures)
                        if k in (f"gradcam_{name}", f"reliability_{name}") or k.startswith(f"gradcam_{name}_fold")}
                 for name in models}
    placed = {k for f in per_model.values() for k in f}
    known = list(FIGURE_CAPTIONS)
    order = sorted((n for n in figures if n not in placed), key=lambda n: (known.index(n) if n in known else len(known), n))
    run_figures = [(name, FIGURE_CAPTIONS.get(name, label(name)), figures[name]) for name in order]
    positive, negative = report_module.class_names(report)
    return _environment().get_template("report.html.j2").render(
        r=report, words=report_module.words(report), positive=positive, negative=negative, ds=report["dataset"], models=models,
        level=level, metric_names=stats.METRICS,
        per_model=per_model, run_figures=run_figures,
        config_yaml=yaml.safe_dump(report.get("config", {}), sort_keys=False),
    )
