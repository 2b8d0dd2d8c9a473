"""A 3-class run end to end (one tiny training shared by every test here, ``k3_run``): the
report's multiclass and by_lesion objects recomputed with scikit-learn from predictions.csv and
lesions.csv, the p_<class> columns, the documents (issue 27)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, confusion_matrix, roc_auc_score

pytestmark = pytest.mark.e2e

HEAD = ("LM", "NET", "GIST")


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predictions_have_one_probability_per_class_summing_to_one(k3_run):
    rows = _csv(k3_run / "predictions.csv")
    assert list(rows[0])[:7] == ["key", "patient_id", "label", "fold", "model", "probability", "score"]
    assert [c for c in rows[0] if c.startswith("p_")] == [f"p_{c}" for c in HEAD]
    for r in rows:
        p = [float(r[f"p_{c}"]) for c in HEAD]
        assert abs(sum(p) - 1) < 1e-9
        assert abs(float(r["probability"]) - p[2]) < 1e-6  # the endpoint: P(GIST), the softmax mass
    assert all(r["lesion_id"].startswith("l-") for r in rows)


def test_report_multiclass_is_recomputed_by_scikit_learn(k3_run):
    report = json.loads((k3_run / "report.json").read_text())
    mc = report["models"]["resnet34"]["multiclass"]
    rows = sorted(_csv(k3_run / "predictions.csv"), key=lambda r: r["key"])
    y = np.array([HEAD.index(r["label"]) for r in rows])
    p = np.array([[float(r[f"p_{c}"]) for c in HEAD] for r in rows])
    called = p.argmax(axis=1)
    assert mc["classes"] == list(HEAD)
    assert mc["confusion"] == confusion_matrix(y, called, labels=[0, 1, 2]).tolist()
    assert mc["accuracy"]["value"] == pytest.approx((y == called).mean())
    assert mc["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y, called))
    assert mc["kappa"]["value"] == pytest.approx(cohen_kappa_score(y, called))
    for c, name in enumerate(HEAD):
        assert mc["auc_ovr"][name]["value"] == pytest.approx(roc_auc_score(y == c, p[:, c]))
    assert report["dataset"]["classes"] == {"GIST": "positive", "LM": "other", "NET": "other"}


def test_report_by_lesion_is_recomputed_from_lesions_csv(k3_run):
    report = json.loads((k3_run / "report.json").read_text())
    bl = report["models"]["resnet34"]["by_lesion"]
    lesions = _csv(k3_run / "lesions.csv")
    images = _csv(k3_run / "predictions.csv")
    assert bl["lesions"] == len(lesions) == len({r["lesion_id"] for r in images})
    # each lesion's P is the softmax of the mean of its images' log P (= logits up to a constant)
    for lesion in lesions:
        mine = np.array([[np.log(float(r[f"p_{c}"])) for c in HEAD] for r in images
                         if r["lesion_id"] == lesion["lesion_id"]]).mean(axis=0)
        expected = np.exp(mine) / np.exp(mine).sum()
        np.testing.assert_allclose([float(lesion[f"p_{c}"]) for c in HEAD], expected, rtol=1e-9)
        assert lesion["call"] == HEAD[int(expected.argmax())]
    truth = np.array([r["label"] == "GIST" for r in lesions])
    p = np.array([float(r["p_GIST"]) for r in lesions])
    assert bl["roc_auc"]["value"] == pytest.approx(roc_auc_score(truth, p))
    assert bl["confusion_matrix"]["tp"] == int(((p >= 0.5) & truth).sum())
    assert bl["confusion_matrix"]["tn"] == int(((p < 0.5) & ~truth).sum())


def test_documents_show_the_confusion_matrix_and_both_units(k3_run):
    md = (k3_run / "report.md").read_text()
    assert "| true \\ predicted | LM | NET | GIST |" in md and "| | by image | by lesion |" in md
    html = (k3_run / "report.html").read_text()
    assert "true \\ predicted" in html and "by lesion" in html
    assert "| PPV | NPV | calibration intercept | calibration slope |" in md and "<th>calibration slope</th>" in html
    assert (k3_run / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert "the clinical endpoint GIST against every other class (LM, NET)" in (k3_run / "checklist.md").read_text()
    card = (k3_run / "resnet34" / "model_card.md").read_text()
    assert "3-class head" in card
    from safetensors import safe_open

    with safe_open(str(k3_run / "resnet34" / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["gistnet"])["num_classes"] == 3
        assert f.get_tensor("fc.weight").shape[0] == 3


def test_predict_export_and_onnx_give_k_columns_and_a_lesion_table(k3_run, tmp_path):
    from gistnet import config
    from gistnet.serving import export, predict, trained
    from tests.conftest import write_k_class_data

    data = write_k_class_data(tmp_path / "data", lesions_per_class=2, seed=5)
    cfg = config.load_config(None, {}, environ={})
    predict.run(predict.Request(str(k3_run), str(data), str(tmp_path / "torch")), cfg, str(tmp_path))
    rows = _csv(tmp_path / "torch" / "predictions.csv")
    assert [c for c in rows[0] if c.startswith("p_")] == [f"p_{c}" for c in HEAD]
    assert all(abs(sum(float(r[f"p_{c}"]) for c in HEAD) - 1) < 1e-9 for r in rows)
    assert {r["call"] for r in rows} <= {"GIST", "non-GIST"}  # the endpoint's call, at the run's threshold
    lesions = _csv(tmp_path / "torch" / "lesions.csv")
    assert len(lesions) == 6 and {r["label"] for r in lesions} == set(HEAD)
    sidecar = export.export_onnx(trained.open_run(str(k3_run), "best", cfg.storage), str(tmp_path))
    assert sidecar["output"]["shape"] == ["batch", 3] and sidecar["output"]["columns"] == list(HEAD)
    assert sidecar["endpoint"]["positive_class"] == "GIST" and sidecar["endpoint"]["column"] == 2
    predict.run(predict.Request(str(k3_run), str(data), str(tmp_path / "onnx"), engine="onnx"), cfg, str(tmp_path))
    onnx_rows = _csv(tmp_path / "onnx" / "predictions.csv")
    for a, b in zip(rows, onnx_rows):
        assert abs(float(a["p_GIST"]) - float(b["p_GIST"])) < 1e-4 and abs(float(a["score"]) - float(b["score"])) < 1e-3


def test_evaluate_takes_a_subset_of_the_classes_and_refuses_an_unknown_one(k3_run, tmp_path, cli):
    from tests.conftest import write_k_class_data

    subset = write_k_class_data(tmp_path / "subset", classes=("GIST", "NET"), lesions_per_class=4, seed=7,
                                manifest=False)
    done = cli("evaluate", "--run", k3_run, "--data", subset, "--output", tmp_path / "ev")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["dataset"]["images"] == {"GIST": 8, "NET": 8}
    mc = report["models"]["resnet34"]["multiclass"]
    rows = sorted(_csv(tmp_path / "ev" / "predictions.csv"), key=lambda r: r["key"])
    y = np.array([HEAD.index(r["label"]) for r in rows])
    p = np.array([[float(r[f"p_{c}"]) for c in HEAD] for r in rows])
    assert mc["confusion"] == confusion_matrix(y, p.argmax(axis=1), labels=[0, 1, 2]).tolist()
    assert mc["confusion"][0] == [0, 0, 0]  # LM is not in the external set
    assert report["models"]["resnet34"]["by_lesion"]["lesions"] == 16  # no ids: each image its own lesion
    unknown = write_k_class_data(tmp_path / "unknown", classes=("GIST", "XYZ"), lesions_per_class=2, manifest=False)
    done = cli("evaluate", "--run", k3_run, "--data", unknown, "--output", tmp_path / "ev2")
    assert done.returncode == 4 and "unknown class folder 'XYZ'" in done.stderr


def test_a_reader_study_of_lesions_scores_each_lesion_as_the_run_does(k3_run, tmp_path, cli):
    """Cases named by the manifest's lesion ids (issue 28): the model's score of a case is its
    lesion's (lesions.csv of the evaluation), readers.json names lesions only by their pseudonyms."""
    from gistnet.data import synth_readers
    from tests.conftest import write_k_class_data

    data = write_k_class_data(tmp_path / "external", lesions_per_class=4, seed=11)
    manifest = data / "manifest.csv"  # patients of their own (k3's are p001...: development patients)
    manifest.write_text(manifest.read_text().replace(",p0", ",q0"))
    rows = _csv(manifest)
    lesions = sorted({r["lesion_id"] for r in rows})
    truth = [next(r["label"] for r in rows if r["lesion_id"] == lesion) for lesion in lesions]
    readers = tmp_path / "readers.csv"
    readers.write_text(synth_readers.simulate(lesions, truth, "GIST", 3, 0, None))
    out = tmp_path / "study"
    done = cli("readers", "--readers", readers, "--run", k3_run, "--data", data, "--output", out)
    assert done.returncode == 0, done.stderr
    doc = json.loads((out / "readers.json").read_text())
    assert doc["design"]["cases"] == len(lesions) == 12
    scored = [r for r in _csv(out / "model-evaluation" / "lesions.csv") if r["model"] == "resnet34"]
    assert len(scored) == 12 and all(r["lesion_id"].startswith("l-") for r in scored)
    y = [int(r["label"] == "GIST") for r in scored]
    margin = [np.log(float(r["p_GIST"])) - np.log(float(r["p_LM"]) + float(r["p_NET"])) for r in scored]
    assert doc["model"]["auc"]["value"] == pytest.approx(roc_auc_score(y, margin))
    text = (out / "readers.json").read_text()
    assert not any(f'"{lesion}"' in text for lesion in lesions)  # raw lesion ids stay in the readers file

    mixed = tmp_path / "mixed.csv"
    mixed.write_text(readers.read_text().replace(f"{lesions[0]},", f"{rows[0]['path']},"))
    done = cli("readers", "--readers", mixed, "--run", k3_run, "--data", data, "--output", tmp_path / "m")
    assert done.returncode == 4 and "the cases mix image keys and lesion ids" in done.stderr
