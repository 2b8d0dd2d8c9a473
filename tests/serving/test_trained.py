"""Opening a finished run's model for predict/export."""

import json

import pytest

from gistnet import config
from gistnet.serving import ensemble, trained
from gistnet.errors import ModelError


def _kfold_run(tmp_path, folds):
    run = tmp_path / "kf"
    run.mkdir()
    (run / "config.yaml").write_text("split:\n  method: kfold\n  folds: 3\n")
    (run / "report.json").write_text(json.dumps({
        "run_id": "kf", "status": "complete", "best_model": "resnet34", "evaluation": {"method": "kfold", "folds": 3},
        "models": {"resnet34": {"folds": folds, "across_folds": {}}}}))
    return run


def test_a_kfold_run_opens_as_the_ensemble_of_its_fold_models(tmp_path):
    """A k-fold report names one weights file per fold: predict/export use all of them, as
    evaluate does; the model's sha256 is the digest of the members' sha256s, in fold order."""
    folds = [{"fold": i, "youden_threshold": t, "checkpoint": {"sha256": f"{i:064d}"}}
             for i, t in enumerate((0.2, 0.6, 0.3))]
    model = trained.open_run(str(_kfold_run(tmp_path, folds)), "best", config.Config().storage)
    assert model.is_ensemble and model.scoring.youden == 0.3
    assert [m.key for m in model.scoring.members] == [f"folds/{i}/resnet34/model.safetensors" for i in range(3)]
    import hashlib

    assert model.sha256 == hashlib.sha256("".join(f"{i:064d}\n" for i in range(3)).encode()).hexdigest()
    assert model.scoring.scoring == "ensemble of 3 fold models (mean logit margin)"
    with pytest.raises(ModelError, match="is an ensemble of 3 fold models, not one network"):
        trained.load_weights(model, str(tmp_path))
    assert ensemble.members_digest(model.scoring.members) == model.sha256


def test_a_kfold_report_without_fold_weights_is_refused(tmp_path):
    with pytest.raises(ModelError, match="model resnet34 has neither a checkpoint nor folds in report.json"):
        trained.open_run(str(_kfold_run(tmp_path, [])), "best", config.Config().storage)
