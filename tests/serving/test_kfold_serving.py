"""A k-fold run used by predict and export (issue 21): its fold models score as one ensemble, the
mean of their logit margins, the way ``gistnet evaluate`` scores it; every fold's weights are
checked. The session's 2-fold run of ``tiny_data`` (``kfold_run`` in tests/conftest.py: ResNet-34,
32 px, 1 epoch) serves the module, read-only."""

import csv
import io
import json
import shutil

import numpy as np
import pytest
import torch

from gistnet import errors, models
from gistnet.config import load_config
from gistnet.data import dataset, synth
from gistnet.data.storage import LocalStore, sha256_file
from gistnet.serving import export, predict, trained
from tests.conftest import copy_tree

pytestmark = pytest.mark.e2e

CFG = load_config(None, environ={})
OWN = ("GIST/gist_0002.png", "LM/lm_0005.png")  # two of the run's own images, copied into the new data


@pytest.fixture(scope="module")
def new_data(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("kfold-new-data")
    synth.write_dataset(LocalStore(root), 5, 5, 32, seed=11)
    for i, key in enumerate(OWN):
        shutil.copyfile(tiny_data / key, root / key.replace(".png", f"-copy{i}.png"))
    return root


@pytest.fixture(scope="module")
def torch_predictions(kfold_run, new_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("kfold-pred-torch")
    predict.run(predict.Request(run=str(kfold_run), data=str(new_data), output=str(out)), CFG, scratch=str(out))
    return json.loads((out / "predictions.json").read_text()), (out / "predictions.csv").read_text()


def _fold_margins(run, data, keys) -> np.ndarray:
    """Per fold network (rows), logit(GIST) - logit(LM) of each image, each network loaded straight
    from its weights file and fed ImageNet-normalised pixels, with no gistnet scoring code."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels = []
    for key in keys:
        a = dataset.decode_pixels((data / key).read_bytes(), 32, 10**8)
        a = np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else (np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a)
        pixels.append(a)
    x = (torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255 - mean) / std
    margins = []
    for fold in (0, 1):
        network = models.build_model("resnet34")
        network.load_state_dict(models.load_state_dict_file(str(run / f"folds/{fold}/resnet34/model.safetensors")))
        with torch.no_grad():
            logits = network.eval()(x).double()
        margins.append((logits[:, 1] - logits[:, 0]).numpy())
    return np.array(margins)


def test_predict_scores_with_the_mean_fold_margin_and_says_so(kfold_run, new_data, torch_predictions):
    result, text = torch_predictions
    rows = result["predictions"]
    keys = [r["key"] for r in rows]
    per_fold = _fold_margins(kfold_run, new_data, keys)
    expected = per_fold.mean(axis=0)
    scores = np.array([r["score"] for r in rows])
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose([r["probability"] for r in rows], 1 / (1 + np.exp(-expected)), atol=1e-5)
    assert np.abs(per_fold[0] - per_fold[1]).max() > 1e-2  # the two folds disagree: the mean is not one of them
    report = json.loads((kfold_run / "report.json").read_text())
    folds = report["models"]["resnet34"]["folds"]
    assert result["scoring"] == "ensemble of 2 fold models (mean logit margin)"
    assert [(w["fold"], w["sha256"]) for w in result["weights"]] == [(f["fold"], f["checkpoint"]["sha256"])
                                                                     for f in folds]
    assert [w["sha256"] for w in result["weights"]] == [sha256_file(kfold_run / f"folds/{i}/resnet34/model.safetensors")
                                                        for i in (0, 1)]
    assert result["threshold"] == 0.5 and result["threshold_source"] == "the run's pre-specified threshold"
    assert result["exploratory_threshold"] == {
        "value": float(np.median([f["youden_threshold"] for f in folds])), "used": False,
        "source": "the median of the folds' Youden thresholds (development run)"}
    assert "mean over the 2 fold models" in result["score"]
    assert all(r["call"] == ("GIST" if r["probability"] >= 0.5 else "LM") for r in rows)
    csv_rows = list(csv.DictReader(io.StringIO(text)))
    assert {(r["scoring"], r["threshold"], r["weights_sha256"]) for r in csv_rows} == \
        {("ensemble of 2 fold models (mean logit margin)", "0.5", result["weights_sha256"])}
    # the run's own images (every image of a k-fold run is a development image) stay out of the metrics
    assert result["counts"]["development"] == 2
    assert sorted(r["development_key"] for r in rows if r["development_key"]) == sorted(OWN)
    assert result["evaluation"]["counts"] == {"GIST": 5, "LM": 5}


def test_export_writes_one_onnx_ensemble_that_predict_verifies_and_agrees_with_torch(kfold_run, new_data,
                                                                                     torch_predictions, tmp_path):
    run = copy_tree(kfold_run, tmp_path / "kf")  # export writes into the run
    model = trained.open_run(str(run), "best", CFG.storage)
    sidecar = export.export_onnx(model, str(tmp_path))
    assert (run / "resnet34" / "model.onnx").exists() and sidecar["check"]["max_abs_difference_vs_torch"] <= \
        export.TOLERANCE
    assert [m["sha256"] for m in sidecar["members"]] == [w["sha256"] for w in torch_predictions[0]["weights"]]
    assert sidecar["weights_sha256"] == model.sha256 == torch_predictions[0]["weights_sha256"]
    predict.run(predict.Request(run=str(run), data=str(new_data), output=str(tmp_path / "onnx"), engine="onnx"),
                CFG, scratch=str(tmp_path))
    onnx_result = json.loads((tmp_path / "onnx" / "predictions.json").read_text())
    assert onnx_result["onnx_sha256"] == sidecar["sha256"] and onnx_result["scoring"] == torch_predictions[0]["scoring"]
    torch_rows = {r["key"]: r for r in torch_predictions[0]["predictions"]}
    for row in onnx_result["predictions"]:
        assert abs(row["score"] - torch_rows[row["key"]]["score"]) <= 1e-4
        assert abs(row["probability"] - torch_rows[row["key"]]["probability"]) <= 1e-4


def test_a_tampered_fold_weights_file_is_refused_naming_it(kfold_run, new_data, tmp_path):
    run = tmp_path / "run"
    for key in ("report.json", "config.yaml", "fingerprints.json", "folds/0/resnet34/model.safetensors",
                "folds/1/resnet34/model.safetensors"):
        (run / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kfold_run / key, run / key)
    weights = run / "folds/1/resnet34/model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    with pytest.raises(errors.ModelError) as caught:  # the CLI prints this one line and exits 9
        predict.run(predict.Request(run=str(run), data=str(new_data), output=str(tmp_path / "out")), CFG,
                    scratch=str(tmp_path))
    assert caught.value.exit_code == 9
    message = str(caught.value)
    assert f"{run}/folds/1/resnet34/model.safetensors: sha256" in message and "does not match" in message
    assert "refusing to use these weights" in message and "\n" not in message
    with pytest.raises(errors.ModelError, match="folds/1/resnet34/model.safetensors: sha256 .* does not match"):
        export.export_onnx(trained.open_run(str(run), "best", CFG.storage), str(tmp_path))
    assert not (tmp_path / "out").exists() and not (run / "resnet34").exists()
