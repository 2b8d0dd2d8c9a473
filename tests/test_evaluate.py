import torch

from gistnet import evaluate


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
    loss, probs = evaluate.predict(model, images, torch.tensor([0, 1, 0, 1, 0]), 2, lambda x: x.float())
    assert probs.shape == (5,) and torch.all((probs >= 0) & (probs <= 1))
    assert loss.ndim == 0 and float(loss) > 0


def test_youden_threshold_maximises_sensitivity_plus_specificity():
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    probs = torch.tensor([0.9, 0.7, 0.45, 0.2, 0.35, 0.3, 0.1, 0.05], dtype=torch.float64)
    t = evaluate.youden_threshold(labels, probs)
    assert t == 0.45  # 3/4 GIST and 4/4 LM right: J = 0.75, the best of any cut
    assert evaluate.confusion(labels, probs, t) == {"tp": 3, "fn": 1, "tn": 4, "fp": 0}
    assert evaluate.youden_threshold(torch.tensor([1, 1]), torch.tensor([0.3, 0.9])) == 0.5
