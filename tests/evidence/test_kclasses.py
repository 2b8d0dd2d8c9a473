"""A model's K-class and by-lesion sections from predictions rows, recomputed independently
(scikit-learn, numpy) from the same p_<class> columns a reviewer would read (issue 27)."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, confusion_matrix, roc_auc_score

from gistnet.evidence import kclasses, multiclass, predictions

HEAD = ("LM", "NET", "GIST")  # classes.head_order: the positive class (GIST) last


def _rows(seed=0, lesions=30, per=3):
    rng = np.random.default_rng(seed)
    keys, patients, labels, lesion_ids, logits = [], [], [], [], []
    for lesion in range(lesions):
        y = lesion % 3
        for i in range(per):
            keys.append(f"{HEAD[y]}/l{lesion}-{i}.png")
            patients.append(f"p{lesion // 2}" if y == 0 else f"q{lesion}")  # class 0: two lesions per patient
            labels.append(y)
            lesion_ids.append(f"L{lesion}")
            z = rng.normal(size=3)
            z[y] += 1.2
            logits.append(z)
    p, margin = multiclass.endpoint(np.array(logits), 2)
    return predictions.rows(keys, patients, labels, ("GIST", "non-GIST"), None, "resnet34", p, margin,
                            np.array(logits), HEAD, lesion_ids), np.array(labels), np.array(logits), lesion_ids


def test_multiclass_section_matches_scikit_learn_from_the_csv_columns():
    rows, y, logits, _ = _rows()
    back = predictions.from_csv(predictions.to_csv(rows))  # what a reviewer reads
    mc, _, _ = kclasses.sections(back, HEAD, "wilson", 0.95)
    table = list(csv.DictReader(io.StringIO(predictions.to_csv(rows).decode())))
    order = sorted(range(len(rows)), key=lambda i: rows[i].key)
    probs = np.array([[float(table[j][f"p_{c}"]) for c in HEAD] for j in range(len(table))])
    truth = np.array([HEAD.index(t["label"]) for t in table])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    called = probs.argmax(axis=1)
    assert mc["classes"] == list(HEAD)
    assert mc["confusion"] == confusion_matrix(truth, called, labels=[0, 1, 2]).tolist()
    assert mc["confusion"] == confusion_matrix(y[order], logits[order].argmax(1), labels=[0, 1, 2]).tolist()
    np.testing.assert_allclose(mc["balanced_accuracy"]["value"], balanced_accuracy_score(truth, called))
    np.testing.assert_allclose(mc["kappa"]["value"], cohen_kappa_score(truth, called))
    np.testing.assert_allclose(mc["accuracy"]["value"], (truth == called).mean())
    for c, name in enumerate(HEAD):
        np.testing.assert_allclose(mc["auc_ovr"][name]["value"], roc_auc_score(truth == c, probs[:, c]), atol=1e-12)
    np.testing.assert_allclose(mc["macro_auc"], roc_auc_score(truth, probs, multi_class="ovr", average="macro"),
                               atol=1e-12)


def test_by_lesion_is_the_mean_logit_per_lesion_then_the_softmax_and_the_images_threshold():
    rows, y, logits, lesion_ids = _rows(seed=1)
    _, bl, table = kclasses.sections(rows, HEAD, "wilson", 0.95)
    ids = sorted(set(lesion_ids))
    mean = np.array([logits[[i for i, lid in enumerate(lesion_ids) if lid == L]].mean(axis=0) for L in ids])
    p = np.exp(mean) / np.exp(mean).sum(axis=1, keepdims=True)
    truth = np.array([y[lesion_ids.index(L)] for L in ids]) == 2
    assert bl["lesions"] == len(ids) == len(table) and bl["images"] == len(rows)
    assert bl["lesion_ids_from"] == "lesion_id"
    np.testing.assert_allclose(bl["roc_auc"]["value"], roc_auc_score(truth, p[:, 2]), atol=1e-12)
    tp = int(((p[:, 2] >= 0.5) & truth).sum())
    assert bl["confusion_matrix"]["tp"] == tp
    assert bl["confusion_matrix"]["fn"] == int(truth.sum()) - tp
    assert "applied to each lesion" in bl["threshold_note"]
    np.testing.assert_allclose([[r[f"p_{c}"] for c in HEAD] for r in table], p, atol=1e-9)
    assert [r["call"] for r in table] == [HEAD[i] for i in p.argmax(axis=1)]


def test_lesions_csv_has_the_documented_columns_and_probabilities_summing_to_one():
    rows, *_ = _rows(seed=2)
    _, _, table = kclasses.sections(rows, HEAD, "wilson", 0.95)
    text = kclasses.lesions_csv({"resnet34": table}).decode()
    read = list(csv.DictReader(io.StringIO(text)))
    assert list(read[0]) == ["lesion_id", "patient_id", "model", "label", "images", "p_LM", "p_NET", "p_GIST", "call"]
    for r in read:
        assert abs(sum(float(r[f"p_{c}"]) for c in HEAD) - 1) < 1e-12


def test_without_lesion_ids_every_patient_is_one_lesion():
    rows, *_ = _rows(seed=3)
    plain = [r.__class__(**{**r.__dict__, "lesion_id": ""}) for r in rows]
    _, bl, _ = kclasses.sections(plain, HEAD, "wilson", 0.95)
    assert bl["lesion_ids_from"] == "patient_id"
    assert bl["lesions"] == len({r.patient_id for r in rows})


def test_the_report_markdown_shows_the_confusion_matrix_and_both_units():
    rows, *_ = _rows(seed=4)
    mc, bl, _ = kclasses.sections(rows, HEAD, "wilson", 0.95)
    model = {"multiclass": mc, "by_lesion": bl, "roc_auc": bl["roc_auc"], "metrics": bl["metrics"]}
    text = kclasses.markdown({"models": {"resnet34": model}})
    assert "| true \\ predicted | LM | NET | GIST |" in text
    assert "| ROC AUC |" in text and "by lesion" in text


def test_the_confusion_figure_is_a_png(tmp_path):
    rows, *_ = _rows(seed=5)
    mc, _, _ = kclasses.sections(rows, HEAD, "wilson", 0.95)
    kclasses.confusion_figure({"resnet34": {"multiclass": mc}}, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_checklist_states_the_outcome_for_two_and_for_k_classes():
    from gistnet.evidence import checklist

    two = {"dataset": {"classes": {"GIST": "positive", "LM": "negative"}}, "models": {"resnet34": {}}}
    assert checklist._outcome(two) == "GIST (positive) against LM: P(GIST) of a two-class softmax"
    k = {"dataset": {"classes": {"GIST": "positive", "LM": "other", "NET": "other"}},
         "models": {"resnet34": {"by_lesion": {}}}}
    text = checklist._outcome(k)
    assert text.startswith("the clinical endpoint GIST against every other class (LM, NET): P(GIST) is the softmax "
                           "mass of GIST over 3 classes")
    assert "also by lesion" in text


def test_two_models_multi_class_calls_are_compared_by_mcnemar_on_the_most_probable_class():
    """Issue 27: the paired comparison adds McNemar on the multi-class calls (K > 2), beside the
    endpoint's; recomputed from a hand-built 2 x 2 table with statsmodels' exact test."""
    from statsmodels.stats.contingency_tables import mcnemar

    from gistnet import config
    import jsonschema

    from gistnet.evidence import aggregate, report

    head = ("LM", "NET", "GIST")
    rng = np.random.default_rng(3)
    n = 60
    truth = rng.integers(0, 3, n)
    pooled = {}
    for name, skill in (("resnet34", 2.5), ("resnet50", 0.8)):
        logits = rng.normal(size=(n, 3)) + skill * np.eye(3)[truth]
        rows = predictions.rows([f"k{i:03d}" for i in range(n)], [""] * n, truth,
                                ("GIST", "other"), None, name, np.zeros(n), np.zeros(n), logits, head)
        right = kclasses.called_right(rows)
        assert right.tolist() == (logits.argmax(axis=1) == truth).tolist()
        probs = multiclass.probabilities(logits)[:, 2]
        pooled[name] = aggregate.Pooled([r.key for r in rows], (truth == 2).astype(int), probs,
                                        np.log(probs / (1 - probs)), np.full(n, 0.5), [""] * n, class_correct=right)
    cfg = config.load_config(None, {"data.classes": "GIST,LM,NET"}, environ={})
    section = aggregate._comparison(["resnet34", "resnet50"], pooled, cfg)
    a, b = pooled["resnet34"].class_correct, pooled["resnet50"].class_correct
    table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
    got = section["mcnemar_multiclass"]
    assert (got["only_first_correct"], got["only_second_correct"]) == (table[0][1], table[1][0])
    assert got["p"] == pytest.approx(mcnemar(table, exact=True).pvalue)
    assert any("multi-class accuracy" in line for line in section["interpretation"])
    jsonschema.validate(section, {"$defs": report.schema()["$defs"], "$ref": "#/$defs/comparison"})
    two = config.load_config(None, {}, environ={})  # two classes: the endpoint's McNemar is the multi-class one
    assert "mcnemar_multiclass" not in aggregate._comparison(["resnet34", "resnet50"], pooled, two)
