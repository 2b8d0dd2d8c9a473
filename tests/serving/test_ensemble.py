"""A k-fold run's models as an ensemble: the mean of the fold networks' logit margins."""

import pytest
import torch

from gistnet.serving import ensemble


class Fixed(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)

    def forward(self, x):
        return self.logits[: len(x)]


def test_ensemble_is_the_mean_logit_margin():
    a = Fixed([[0.0, 2.0], [1.0, 0.0]])  # margins 2, -1
    b = Fixed([[0.5, 0.0], [0.0, 3.0]])  # margins -0.5, 3
    scorer = ensemble.EnsembleScorer([a, b], torch.device("cpu"))
    margins = scorer(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    assert margins.tolist() == pytest.approx([0.75, 1.0])


def _fold(i, youden):
    return {"fold": i, "youden_threshold": youden, "checkpoint": {"sha256": f"{i:064d}"}}


def test_kfold_report_gives_members_and_the_median_youden():
    report = {"models": {"resnet34": {"folds": [_fold(0, 0.3), _fold(1, 0.7), _fold(2, 0.4)]}}}
    model = ensemble.run_model(report, "resnet34", "run")
    assert [m.key for m in model.members] == [f"folds/{i}/resnet34/model.safetensors" for i in range(3)]
    assert model.youden == 0.4 and model.is_ensemble and "median of the folds' Youden" in model.kind
    holdout = {"models": {"resnet34": {"checkpoint": {"sha256": "ab"},
                                       "thresholds": {"youden": {"values": [0.61]}}}}}
    single = ensemble.run_model(holdout, "resnet34", "run")
    assert single.members == (ensemble.Member("resnet34/model.safetensors", "ab", None),) and single.youden == 0.61
