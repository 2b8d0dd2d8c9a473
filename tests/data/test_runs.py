"""The (fold, model) units of a run, and which ones a process trains."""
import re

import pytest

from gistnet import config
from gistnet.data import runs
from gistnet.errors import ConfigError


def _run_config(**flags):
    return config.load_config(None, {"split.method": "kfold", "split.folds": 3, **flags}, environ={})


def test_completion_index_picks_fold_then_model_and_covers_every_unit_once():
    cfg = _run_config()
    picked = [runs.select("auto", None, cfg, {"JOB_COMPLETION_INDEX": str(i)})[0] for i in range(6)]
    assert picked == [runs.Unit(f, m) for m in ("resnet34", "resnet50") for f in (0, 1, 2)]
    assert sorted(picked, key=str) == sorted(runs.all_units(cfg), key=str)
    holdout = config.load_config(None, {}, environ={})  # a hold-out fans out over its models
    assert runs.select("auto", None, holdout, {"JOB_COMPLETION_INDEX": "1"}) == [runs.Unit(None, "resnet50")]


def test_fold_and_model_select_units():
    cfg = _run_config()
    assert runs.select(None, None, cfg, {}) == runs.all_units(cfg)
    assert runs.select("1", "resnet50", cfg, {}) == [runs.Unit(1, "resnet50")]
    assert runs.select(None, "resnet34", cfg, {}) == [runs.Unit(f, "resnet34") for f in (0, 1, 2)]


@pytest.mark.parametrize("fold, model, environ, fragment", [
    ("auto", None, {}, "--fold auto needs JOB_COMPLETION_INDEX"),
    ("auto", None, {"JOB_COMPLETION_INDEX": "6"}, "JOB_COMPLETION_INDEX=6 is out of range"),
    ("auto", None, {"JOB_COMPLETION_INDEX": "x"}, "is not an integer"),
    ("auto", "resnet34", {"JOB_COMPLETION_INDEX": "0"}, "drop --model"),
    ("0", "resnet18", {}, "--model resnet18 is not one of this run's train.models"),
])
def test_bad_unit_selections_are_config_errors(fold, model, environ, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        runs.select(fold, model, _run_config(), environ)
