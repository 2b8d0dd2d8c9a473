import numpy as np
import torch

from gistnet.evidence import evaluate


def test_diagnostic_report_counts_and_auc():
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    probs = torch.tensor([0.9, 0.8, 0.3, 0.6, 0.2, 0.1])
    rep = evaluate.diagnostic_report(labels, probs, "wilson", 0.95)
    assert rep["confusion_matrix"] == {"tp": 2, "fp": 1, "tn": 2, "fn": 1}
    assert rep["metrics"]["sensitivity"]["numerator"] == 2 and rep["metrics"]["sensitivity"]["denominator"] == 3
    assert abs(rep["roc_auc"]["value"] - 8 / 9) < 1e-9
    assert rep["roc_auc"]["ci_low"] < rep["roc_auc"]["value"] <= rep["roc_auc"]["ci_high"]


def test_single_class_gives_null_auc():
    rep = evaluate.diagnostic_report(torch.tensor([0, 0]), torch.tensor([0.2, 0.7]), "wald", 0.95)
    assert rep["roc_auc"]["value"] is None
    assert rep["metrics"]["sensitivity"]["value"] is None


def test_predict_returns_loss_and_probabilities():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    images = torch.zeros(5, 3, 2, 2, dtype=torch.uint8)
    loss, probs, _, logits = evaluate.predict(model, images, torch.tensor([0, 1, 0, 1, 0]), 2, lambda x: x.float())
    assert logits.shape == (5, 2)
    assert probs.shape == (5,) and torch.all((probs >= 0) & (probs <= 1))
    assert loss.ndim == 0 and float(loss) > 0


def test_predict_returns_probabilities_and_logit_margins():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    images = torch.rand(5, 3, 2, 2)
    out = evaluate.predict(model, images, torch.tensor([0, 1, 0, 1, 0]), 2, lambda x: x)
    logits = model(images).detach()
    torch.testing.assert_close(out.margins, logits[:, 1] - logits[:, 0])
    torch.testing.assert_close(out.probabilities, logits.softmax(1)[:, 1])


def test_a_saturated_model_gives_no_ties_in_the_scores():
    """A confident model: every P(GIST) of the positives and one negative is exactly 1.0, so
    ranking on the probability ties them (AUC 0.9); their margins keep the order (AUC 1.0)."""
    margins_wanted = torch.tensor([60.0, 50.0, 40.0, 30.0, -5.0])  # positives first
    labels = torch.tensor([1, 1, 1, 0, 0])
    model = torch.nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0], [1.0]]))
        model.bias.zero_()
    out = evaluate.predict(model, margins_wanted.view(5, 1), labels, 5, lambda x: x)
    assert torch.equal(out.probabilities[:4], torch.ones(4))  # saturated: tied
    assert len(set(out.margins.tolist())) == 5
    by_probability = evaluate.diagnostic_report(labels, out.probabilities, "wilson", 0.95)
    by_margin = evaluate.diagnostic_report(labels, out.probabilities, "wilson", 0.95, scores=out.margins)
    assert by_probability["roc_auc"]["value"] < 1.0 == by_margin["roc_auc"]["value"]
    assert by_margin["confusion_matrix"] == by_probability["confusion_matrix"]  # the threshold is on P
    curve = evaluate.roc_curve_points(labels, out.margins)
    assert (0.0, 1.0) in zip(curve["fpr"], curve["tpr"])  # all positives before any negative


def test_youden_threshold_maximises_sensitivity_plus_specificity():
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    probs = torch.tensor([0.9, 0.7, 0.45, 0.2, 0.35, 0.3, 0.1, 0.05], dtype=torch.float64)
    t = evaluate.youden_threshold(labels, probs)
    assert t == 0.45  # 3/4 GIST and 4/4 LM right: J = 0.75, the best of any cut
    assert evaluate.confusion(labels, probs, t) == {"tp": 3, "fn": 1, "tn": 4, "fp": 0}
    assert evaluate.youden_threshold(torch.tensor([1, 1]), torch.tensor([0.3, 0.9])) == 0.5


def test_k_class_predict_scores_the_endpoint_as_multiclass_endpoint_does():
    """K outputs (the positive class last): P(positive) is its softmax mass and the margin
    log P(positive) - log P(rest), checked against evidence.multiclass.endpoint (scipy)."""
    from gistnet.evidence import multiclass

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    images = torch.rand(6, 3, 2, 2)
    labels = torch.tensor([0, 1, 2, 3, 3, 0])
    out = evaluate.predict(model, images, labels, 4, lambda x: x)
    p, margin = multiclass.endpoint(out.logits.double().numpy(), 3)
    np.testing.assert_allclose(out.probabilities.numpy(), p, rtol=1e-5)
    np.testing.assert_allclose(out.margins.numpy(), margin, rtol=1e-4, atol=1e-5)
    assert torch.equal(out.correct(labels), out.logits.argmax(1) == labels)
    assert evaluate.endpoint_labels(labels, 4).tolist() == [0, 0, 0, 1, 1, 0]


def test_two_class_endpoint_is_the_old_softmax_column_and_margin_exactly():
    logits = torch.randn(7, 2)
    p, margin = evaluate.endpoint_scores(logits)
    assert torch.equal(p, logits.softmax(dim=1)[:, 1]) and torch.equal(margin, logits[:, 1] - logits[:, 0])
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    assert evaluate.endpoint_labels(labels, 2) is labels
