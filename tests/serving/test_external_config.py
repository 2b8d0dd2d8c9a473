"""Which evaluate.* keys an external evaluation takes from its own --config (issue 31, item 19)."""

import pytest

from gistnet import config
from gistnet.errors import ConfigError
from gistnet.serving import external


def test_evaluate_time_subgroup_keys_win_over_the_runs(tmp_path):
    run = config.load_config(None, {"evaluate.min_subgroup": 10, "evaluate.subgroups": ["site"]}, environ={}).evaluate
    (tmp_path / "c.yaml").write_text("evaluate:\n  min_subgroup: 3\n  subgroups: [sex]\nstorage:\n  region: x\n")
    cfg = config.load_config(tmp_path / "c.yaml", environ={})
    given = {k: getattr(cfg.evaluate, k) for s, k in config.given_keys(tmp_path / "c.yaml", environ={})
             if s == "evaluate"}
    assert given == {"min_subgroup": 3, "subgroups": ("sex",)}
    ev = external.evaluate_config(run, given)
    assert (ev.min_subgroup, ev.subgroups, ev.ci_method) == (3, ("sex",), run.ci_method)
    assert external.evaluate_config(run, None) == run  # nothing given: the run's
    assert config.given_keys(None, environ={"GISTNET_EVALUATE_MIN_SUBGROUP": "4"}) == {("evaluate", "min_subgroup")}


def test_an_interval_method_other_than_the_runs_is_refused_not_silently_ignored():
    run = config.load_config(None, {}, environ={}).evaluate
    assert external.evaluate_config(run, {"ci_method": run.ci_method}) == run  # the same value is harmless
    with pytest.raises(ConfigError, match=r"evaluate.ci_method='wald' differs from the run's 'wilson'"):
        external.evaluate_config(run, {"ci_method": "wald"})
