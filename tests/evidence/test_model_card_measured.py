"""The model card states only what was measured (issue 20, item 9): images per patient from the
manifest's ids (else "unknown"), and the run's own calibration (intercept, slope, Brier)."""

from gistnet.evidence import model_card
from tests.evidence.test_report import build, model_result


def card(patients=None):
    m = model_result(12, 1, 14, 2)
    rep = build({"resnet34": m})
    rep["config"] = {"train": {"seed": 0, "optimizer": "adam", "learning_rate": 1e-4, "weight_decay": 0,
                               "batch_size": 16, "init_weights": {}},
                     "split": {"val_fraction": 0.2}, "data": {"image_size": 224, "positive_class": "GIST",
                                                              "negative_class": "LM"},
                     "augmentation": {"mode": "paper"}}
    if patients is not None:
        rep["dataset"]["patients"] = patients
    return model_card.render(rep, "resnet34"), m


def test_the_card_counts_images_per_patient_from_the_manifest_or_says_unknown():
    text, _ = card()
    assert "One image per lesion as in the paper" not in text
    assert "Images per patient: unknown (no patient ids in a manifest)" in text
    text, _ = card({"patients": 40, "images": 113, "min": 1, "median": 3.0, "max": 6})
    assert "Images per patient: 3 (median; range 1-6) over 40 patients, counted from the manifest" in text
    text, _ = card({"patients": 29, "images": 29, "min": 1, "median": 1.0, "max": 1})
    assert "Images per patient: 1 for every patient over 29 patients" in text


def test_the_card_carries_the_measured_calibration():
    text, m = card()
    c = m["calibration"]
    assert "the probabilities are not calibrated" not in text
    assert f"Brier score {c['brier']:.3f}" in text
    assert f"calibration-in-the-large {c['intercept']:.2f}" in text
    assert ("calibration slope n/a" if c["slope"] is None else f"calibration slope {c['slope']:.2f}") in text
