"""predict's score column and AUC come from the logit margins, in torch and ONNX alike (issue
20, item 5), and its labelled metrics are clustered by patient (item 1). The network is a
stand-in whose logits are chosen: margins 20, 30, 25 (GIST) and 17, 18, -3 (LM), where a
float32 softmax gives P = 1.0 for the five large ones (the issue's example, 17.5 made whole so a
uint8 pixel can carry it)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gistnet.config import load_config
from gistnet.serving import ensemble, predict
from gistnet.serving import trained as trained_mod

LABELS = [1, 1, 1, 0, 0, 0]


class ChosenLogits(torch.nn.Module):
    """Logits (0, margin) with the margin read off the first pixel: margin = pixel value - 100."""

    def forward(self, x):
        # Preprocess maps v to (v / 255 - 0.485) / 0.229 on channel 0: undo it
        value = (x[:, 0, 0, 0] * 0.229 + 0.485) * 255
        margin = torch.round(value) - 100.0
        return torch.stack([torch.zeros_like(margin), margin], dim=1)


def images(margins, size=2):
    """uint8 images whose first pixel encodes the margin (margin + 100, halves rounded away)."""
    out = torch.zeros(len(margins), 3, size, size, dtype=torch.uint8)
    for i, m in enumerate(margins):
        out[i, :, :, :] = int(m + 100)
    return out


def stub_model():
    cfg = load_config(None, {}, environ={})
    scoring = ensemble.RunModel("resnet34", (ensemble.Member("resnet34/model.safetensors", "0" * 64, None),), {}, 0.5,
                                ensemble.SINGLE)
    return SimpleNamespace(config=cfg, class_names=("GIST", "LM"), name="resnet34", run_id="r", sha256="0" * 64,
                           image_size=2, run=SimpleNamespace(uri="local"), scoring=scoring, is_ensemble=False)


def whole_margins():
    """Integer margins the stand-in reproduces exactly through uint8 pixels."""
    return [20.0, 30.0, 25.0, 17.0, 18.0, -3.0]


def test_torch_scores_and_auc_come_from_the_logits(monkeypatch, tmp_path):
    monkeypatch.setattr(ensemble, "load_members", lambda run, model, device, scratch: [ChosenLogits()])
    score = predict._scorer(stub_model(), predict.Request("r", "d", "o"), torch.device("cpu"), str(tmp_path))
    margins_in = whole_margins()
    p, margins = score(images(margins_in))
    assert torch.equal(p[:5], torch.ones(5))  # saturated: the probabilities tie
    np.testing.assert_allclose(margins.numpy(), margins_in)
    scored = predict.Scored(keys=[f"k{i}" for i in range(6)], labels=LABELS, patient_ids=[""] * 6,
                            probabilities=[p], margins=[margins])
    evaluation = predict._evaluate(scored, p, margins.double(), stub_model(), 0.5, list(range(6)))
    assert evaluation["roc_auc"]["value"] == 1.0  # the probabilities give 0.667
    doc = predict._document(predict.Request("r", "d", "o"), stub_model(), SimpleNamespace(uri="local"), scored, p,
                            margins.double(), 0.5, evaluation, torch.device("cpu"), True)
    assert [row["score"] for row in doc["predictions"]] == margins_in  # not 27.63 five times


def test_labelled_metrics_are_clustered_by_patient_when_a_patient_has_several_images():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.r_[np.ones(14), np.zeros(15)], 3).astype(int)
    margins = torch.tensor(np.repeat(rng.normal(size=29), 3) + labels * 1.5)
    p = torch.sigmoid(margins).float()
    patients = list(np.repeat([f"p{i}" for i in range(29)], 3))
    scored = predict.Scored(keys=[f"k{i}" for i in range(87)], labels=labels.tolist(), patient_ids=patients)
    evaluation = predict._evaluate(scored, p, margins, stub_model(), 0.5, list(range(87)))
    assert evaluation["unit_of_analysis"]["text"] == "per image, clustered by patient: 29 patients, 87 images"
    assert evaluation["roc_auc"]["method"] == "obuchowski"
    assert evaluation["metrics"]["sensitivity"]["patients"] == 14


def test_onnx_scores_are_the_logit_margins(tmp_path):
    pytest.importorskip("onnxruntime")
    from gistnet.serving import export

    scorer = trained_mod.Scorer(ChosenLogits(), torch.device("cpu")).eval()
    path = tmp_path / "model.onnx"
    export._export(scorer, 2, path, export.OPSET)
    onnx_scorer = object.__new__(export.OnnxScorer)
    onnx_scorer._session = export.OnnxScorer.session(str(path), "cpu")
    margins_in = whole_margins()
    p, margins = onnx_scorer(images(margins_in))
    assert torch.equal(p[:5], torch.ones(5))
    np.testing.assert_allclose(margins.numpy(), margins_in)


def test_an_onnx_file_without_logits_is_refused(tmp_path, monkeypatch):
    """A model.onnx exported before the logits output (probabilities only) cannot give margins:
    refused with the model exit code, naming the file, rather than ranking on saturated P."""
    pytest.importorskip("onnxruntime")
    from gistnet import errors
    from gistnet.serving import export

    scorer = trained_mod.Scorer(ChosenLogits(), torch.device("cpu")).eval()
    path = tmp_path / "model.onnx"
    program = torch.onnx.export(scorer, (torch.zeros(2, 3, 2, 2, dtype=torch.uint8),), dynamo=True,
                                opset_version=export.OPSET, input_names=[export.INPUT], output_names=[export.OUTPUT],
                                dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, external_data=False)
    program.save(str(path), external_data=False)
    model = stub_model()
    model.run = SimpleNamespace(uri="local", uri_of=lambda key: f"file:///run/{key}")
    model.key = lambda name: f"resnet34/{name}"
    export._add_metadata(path, model, export.OPSET)
    monkeypatch.setattr(trained_mod, "fetch", lambda m, name, scratch: path)
    # the file and its sidecar check out (tested in test_predict.py): this test is about the outputs
    monkeypatch.setattr(export, "read_sidecar", lambda m: {})
    monkeypatch.setattr(export, "verify_file", lambda m, p, sidecar: "0" * 64)
    with pytest.raises(errors.ModelError) as caught:
        export.OnnxScorer(model, str(tmp_path), "cpu")
    assert caught.value.exit_code == 9
    assert "file:///run/resnet34/model.onnx has no logits output" in str(caught.value)
    assert "run gistnet export again" in str(caught.value)
