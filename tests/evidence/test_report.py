import copy

import numpy as np

import jsonschema
import pytest
import torch

from gistnet.evidence import calibration
from gistnet.evidence import compare
from gistnet.evidence import evaluate
from gistnet.evidence import report


def model_result(tp, fp, tn, fn):
    labels = torch.tensor([1] * (tp + fn) + [0] * (tn + fp))
    probs = torch.tensor([0.9] * tp + [0.1] * fn + [0.1] * tn + [0.9] * fp)
    diag = evaluate.diagnostic_report(labels, probs, "wilson", 0.95)
    youden = {**evaluate.diagnostic_report(labels, probs, "wilson", 0.95, threshold=0.3), "exploratory": True,
              "chosen_on": "Youden's J on the training images", "values": [0.3]}
    return {"history": [{"epoch": 1, "train_loss": 0.7, "train_accuracy": 0.5, "val_loss": 0.69,
                         "val_accuracy": 0.5, "images": 32, "train_seconds": 0.8, "seconds": 1.0}], **diag,
            "calibration": calibration.calibration(labels.numpy(), probs.numpy(), (probs.numpy() - 0.5) * 4),
            "thresholds": {"primary": {**diag, "value": 0.5, "pre_specified": True}, "youden": youden},
            "checkpoint": {"uri": "s3://b/r/resnet34/model.safetensors", "sha256": "0" * 64, "bytes": 10}}


def comparison():
    labels = [1, 1, 1, 0, 0, 0]
    a, b = [0.9, 0.8, 0.3, 0.4, 0.2, 0.1], [0.7, 0.6, 0.5, 0.6, 0.3, 0.2]
    correct = tuple((np.array(s) >= 0.5) == np.array(labels, bool) for s in (a, b))
    return compare.compare(("resnet34", "resnet50"), np.array(labels), (a, b), correct, 0.95, seed=0)


def build(models, comparison=None, names=("GIST", "LM")):
    pos, neg = names
    dataset = {"uri": "s3://b/data", "classes": {pos: "positive", neg: "negative"},
               "train": {pos: 55, neg: 58}, "val": {pos: 14, neg: 15},
               "train_augmented": {pos: 330, neg: 348}, "skipped": [], "split_method": "stratified-holdout"}
    evaluation = {"method": "holdout", "folds": 1, "pooled": False,
                  "finished": [{"fold": None, "model": m} for m in models], "missing": []}
    return report.build("run-1", {"train": {}}, dataset, models, "accuracy", {},
                        environment=report.environment(torch.device("cpu")), created="2026-01-01T00:00:00+00:00",
                        evaluation=evaluation, comparison=comparison)


def test_report_has_the_documented_shape_and_validates():
    rep = build({"resnet34": model_result(12, 1, 14, 2), "resnet50": model_result(11, 3, 12, 3)}, comparison())
    assert rep["schema_version"] == 2 and rep["status"] == "complete"
    assert rep["comparison"]["delong"]["p"] > 0.05 and rep["models"]["resnet34"]["roc_auc"]["method"] == "delong"
    assert rep["best_model"] == "resnet34"
    assert rep["environment"]["torch"] == torch.__version__
    assert "optimistic" in rep["selection"]["note"]
    m = rep["models"]["resnet34"]
    assert m["confusion_matrix"] == {"tp": 12, "fp": 1, "tn": 14, "fn": 2}
    assert m["metrics"]["accuracy"]["numerator"] == 26


def test_schema_rejects_incomplete_reports():
    rep = build({"resnet34": model_result(12, 1, 14, 2)})
    for breakage in (lambda r: r.pop("best_model"), lambda r: r.update(status="done"),
                     lambda r: r["models"]["resnet34"].pop("calibration"),
                     lambda r: r["models"]["resnet34"]["thresholds"]["youden"].pop("exploratory"),
                     lambda r: r["evaluation"].pop("missing"),
                     lambda r: r["models"]["resnet34"].pop("metrics"),
                     lambda r: r["models"]["resnet34"]["history"][0].update(images=0),  # an epoch that trained nothing
                     lambda r: r["models"]["resnet34"]["history"][0].pop("images"),
                     lambda r: r["models"]["resnet34"]["checkpoint"].update(sha256="xyz")):
        broken = copy.deepcopy(rep)
        breakage(broken)
        with pytest.raises(jsonschema.ValidationError):
            report.validate(broken)


def test_null_metrics_are_valid():
    rep = build({"resnet34": model_result(0, 0, 5, 0)})
    assert rep["models"]["resnet34"]["metrics"]["sensitivity"]["value"] is None


def test_summary_and_plots(tmp_path):
    rep = build({"resnet34": model_result(12, 1, 14, 2)})
    text = report.summary(rep)
    assert "TP 12 FN 2 TN 14 FP 1" in text and "85.71% (12/14)" in text
    report.training_curves({"resnet34": rep["models"]["resnet34"]["history"]}, tmp_path / "c.png")
    report.roc_figure({"resnet34": {"curve": {"fpr": [0, 0.1, 1], "tpr": [0, 0.8, 1]}, "auc": 0.9}}, tmp_path / "r.png")
    for name in ("c.png", "r.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_markdown_report_for_a_human_reader():
    rep = build({"resnet34": model_result(12, 1, 14, 2), "resnet50": model_result(0, 0, 15, 14)}, comparison())
    rep["dataset"]["skipped"] = [{"uri": "s3://b/data/GIST/x.png", "reason": "empty object (0 bytes)"}]
    text = report.markdown(rep)
    assert text.startswith("# gistnet run run-1")
    assert "**Best model: resnet34**" in text and "optimistic" in text
    assert "| called GIST | TP 12 | FP 1 |" in text
    assert "| sensitivity | 85.71% (12/14), 60.06-95.99% |" in text
    assert "| ppv | n/a (no cases) |" in text  # resnet50 never called GIST
    assert "`s3://b/data/GIST/x.png`: empty object (0 bytes)" in text
    assert "## Evaluation" in text and "Hold-out validation set" in text
    assert "### Calibration" in text and "Brier score" in text
    assert "| 0.5 (primary, pre-specified) |" in text and "(exploratory)" in text
    assert "## Comparison" in text and "| DeLong's test (delong) | z " in text
    assert "no evidence of a difference between resnet34 and resnet50" in text
    assert "does not show that they are equivalent" in text


def test_report_md_and_summary_use_the_configured_class_names():
    rep = build({"resnet34": model_result(12, 1, 14, 2)}, names=("MALIGNANT", "BENIGN"))
    text, summary = report.markdown(rep), report.summary(rep)
    assert "| | MALIGNANT (truth) | BENIGN (truth) |" in text
    assert "| called MALIGNANT | TP 12 | FP 1 |" in text and "| called BENIGN | FN 2 | TN 14 |" in text
    assert "32 training images stepped" in text
    assert "MALIGNANT positive" in summary
    for shown in (text, summary):
        assert "GIST" not in shown and "LM" not in shown


def test_units_are_named_alike_everywhere_and_a_hold_out_has_no_fold():
    from gistnet.data import runs

    assert report.unit_name({"fold": 2, "model": "resnet50"}) == "resnet50 fold 2"
    assert report.unit_name({"fold": None, "model": "resnet50"}) == "resnet50"  # never "fold None"
    assert runs.Unit(None, "resnet34").name() == "resnet34" and runs.Unit(0, "resnet34").name() == \
        "resnet34 fold 0"


def test_a_degenerate_interval_is_na_with_its_reason_in_every_output():
    """Five validation images, perfectly separated (the 2-rank DDP run): the AUC is 1.000 but
    its interval is n/a with the reason, in report.json, report.md, report.html and the summary."""
    import warnings

    from gistnet.evidence import report_html

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy warning leaks
        rep = build({"resnet34": model_result(3, 0, 2, 0)})
        text, summary = report.markdown(rep), report.summary(rep)
        html = report_html.render(rep, {})
    auc = rep["models"]["resnet34"]["roc_auc"]
    assert auc["value"] == 1.0 and auc["ci_low"] is None and auc["ci_high"] is None
    reason = auc["note"]
    assert "separate the classes perfectly" in reason
    for shown in (text, summary, html):
        assert "1.000-1.000" not in shown and "1.000 to 1.000" not in shown
        assert f"interval n/a ({reason})" in shown
    broken = copy.deepcopy(rep)
    del broken["models"]["resnet34"]["roc_auc"]["note"]  # null bounds without a reason are refused
    with pytest.raises(jsonschema.ValidationError):
        report.validate(broken)


def test_the_report_states_its_unit_of_analysis():
    from gistnet.evidence import report_html

    labels = np.repeat(np.r_[np.ones(14), np.zeros(15)], 3).astype(int)
    scores = np.repeat(np.random.default_rng(0).normal(size=29), 3) + labels
    patients = np.repeat([f"p{i}" for i in range(29)], 3)
    m = model_result(12, 1, 14, 2)
    m.update(evaluate.diagnostic_report(labels, 1 / (1 + np.exp(-scores)), "wilson", 0.95, scores=scores,
                                        clusters=patients))
    rep = build({"resnet34": m})
    wanted = "per image, clustered by patient: 29 patients, 87 images"
    assert rep["models"]["resnet34"]["unit_of_analysis"]["text"] == wanted
    assert rep["models"]["resnet34"]["roc_auc"]["method"] == "obuchowski"
    assert f"Unit of analysis: {wanted}." in report.markdown(rep)
    assert f"Unit of analysis: {wanted}." in report_html.render(rep, {})
    assert f"unit of analysis: {wanted}" in report.summary(rep)
    broken = copy.deepcopy(rep)
    del broken["models"]["resnet34"]["unit_of_analysis"]
    with pytest.raises(jsonschema.ValidationError):
        report.validate(broken)
