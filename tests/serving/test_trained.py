"""Opening a finished run's model for predict/export."""

import json

import pytest

from gistnet import config
from gistnet.serving import trained
from gistnet.errors import ModelError


def test_a_kfold_run_has_no_single_model_to_open(tmp_path):
    """A k-fold report pools k models per architecture and names no weights: predict/export
    refuse it with one line instead of failing on a missing key."""
    run = tmp_path / "kf"
    run.mkdir()
    (run / "config.yaml").write_text("split:\n  method: kfold\n  folds: 3\n")
    (run / "report.json").write_text(json.dumps({
        "run_id": "kf", "status": "complete", "best_model": "resnet34", "evaluation": {"method": "kfold", "folds": 3},
        "models": {"resnet34": {"folds": [], "across_folds": {}}}}))
    with pytest.raises(ModelError, match="is a 3-fold cross-validation: it holds one resnet34 per fold"):
        trained.open_run(str(run), "best", config.Config().storage)
