"""The training report clusters by patient when its predictions carry patient ids with several
images per patient (issue 20, item 1): the aggregation reads ``patient_id`` from each unit's
predictions.csv (written from manifest.csv) and says so in report.json, report.md and report.html."""

import json

import numpy as np
import torch

from gistnet import config
from gistnet.data import split
from gistnet.data.storage import LocalStore
from gistnet.evidence import predictions
from gistnet.evidence import report
from gistnet.data import runs
from gistnet.evidence import aggregate as aggregation
from tests.training.test_units import NAMES, image_set


def test_a_holdout_report_with_three_images_per_patient_is_clustered(tmp_path):
    images = image_set(n_per_class=30)
    cfg = config.load_config(None, {"train.models": "resnet34,resnet50", "split.val_fraction": 0.4}, environ={})
    out = LocalStore(tmp_path / "run")
    plan = split.make_plan(images.keys, images.labels.numpy(), [], cfg.split, 0, NAMES)
    out.write_bytes("config.yaml", cfg.to_yaml().encode())
    out.write_bytes(runs.DATASET, json.dumps({
        "uri": "data", "classes": {"GIST": "positive", "LM": "negative"}, "images": images.counts(NAMES),
        "split_method": "stratified-holdout", "skipped": [],
        "patients": {"patients": 20, "images": 60, "min": 3, "median": 3.0, "max": 3}}).encode())
    val = images.subset(plan.part(None).val)
    patient = {k: f"patient-{i // 3}" for i, k in enumerate(sorted(val.keys))}
    y = val.labels.numpy()
    for seed, model in enumerate(("resnet34", "resnet50")):
        unit = runs.Unit(None, model)
        scores = y * 1.5 + np.random.default_rng(seed).normal(size=len(y))
        predictions.write(out, predictions.rows(val.keys, [patient[k] for k in val.keys], y, NAMES, None, model,
                                                1 / (1 + np.exp(-scores)), scores), unit.key(predictions.FILENAME))
        ckpt = {"uri": out.uri_of(unit.key("model.safetensors")), "sha256": "0" * 64, "bytes": 1}
        out.write_bytes(unit.key("result.json"), json.dumps({
            "fold": None, "model": model, "checkpoint": ckpt, "resumable_checkpoint": {**ckpt, "epoch": 1},
            "history": [{"epoch": 1, "train_loss": 0.7, "train_accuracy": 0.5, "val_loss": 0.69, "val_accuracy": 0.5,
                         "images": 12, "seconds": 1.0}], "resumed_from_epoch": None, "youden_threshold": 0.4,
            "counts": {"train": {"GIST": 12, "LM": 12}, "val": {"GIST": 3, "LM": 3},
                       "train_augmented": {"GIST": 12, "LM": 12}},
            "environment": report.environment(torch.device("cpu")), "finished": "2026-01-01T00:00:00+00:00"}).encode())
    final = aggregation.aggregate(out, cfg, "r", str(tmp_path))
    n = len(val.keys)
    patients = len(set(patient.values()))
    wanted = f"per image, clustered by patient: {patients} patients, {n} images"
    for model in ("resnet34", "resnet50"):
        m = final["models"][model]
        assert m["unit_of_analysis"]["text"] == wanted and m["roc_auc"]["method"] == "obuchowski"
        assert m["metrics"]["accuracy"]["patients"] == patients
    assert final["comparison"]["unit_of_analysis"]["text"] == wanted
    assert final["comparison"]["delong"]["method"] == "obuchowski"
    assert "resampling patients" in final["comparison"]["auc_difference"]["method"]
    assert final["comparison"]["mcnemar"]["method"].startswith("Durkalski")
    root = tmp_path / "run"
    assert f"Unit of analysis: {wanted}." in (root / "report.md").read_text()
    assert f"Unit of analysis: {wanted}." in (root / "report.html").read_text()
    assert "3 (median; range 3-3) over 20 patients" in (root / "resnet34" / "model_card.md").read_text()
