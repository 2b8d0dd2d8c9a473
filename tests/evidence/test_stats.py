import json

import pytest

from gistnet.evidence import stats

PAPER = {  # the published table: value and 95% CI bounds, percent
    "sensitivity": (85.71, 67.38, 100.00), "specificity": (93.33, 80.71, 100.00), "ppv": (92.31, 77.82, 100.00),
    "npv": (87.50, 71.30, 100.00), "accuracy": (89.66, 78.57, 100.00),
}


def test_wald_reproduces_the_papers_table():
    table = stats.diagnostic_table(tp=12, fp=1, tn=14, fn=2, method="wald")
    for name, (value, low, high) in PAPER.items():
        m = table[name]
        assert round(m["value"] * 100, 2) == value
        assert round(m["ci_low"] * 100, 2) == low
        assert round(m["ci_high"] * 100, 2) == high


def test_wilson_is_narrower_at_the_top_and_inside_unit_interval():
    wilson = stats.diagnostic_table(12, 1, 14, 2, "wilson")
    assert wilson["sensitivity"]["ci_high"] < 1.0
    assert 0.55 < wilson["sensitivity"]["ci_low"] < 0.7


@pytest.mark.parametrize("method", ["wald", "wilson", "agresti-coull", "clopper-pearson"])
def test_zero_denominator_is_null_not_a_crash(method):
    table = stats.diagnostic_table(tp=0, fp=0, tn=5, fn=0, method=method)
    assert table["sensitivity"] == {"value": None, "ci_low": None, "ci_high": None, "numerator": 0, "denominator": 0}
    assert table["ppv"]["value"] is None
    assert table["specificity"]["value"] == 1.0


def test_clopper_pearson_contains_wilson_for_small_n():
    cp = stats.proportion(12, 14, "clopper-pearson")
    wi = stats.proportion(12, 14, "wilson")
    assert cp["ci_low"] <= wi["ci_low"] and cp["ci_high"] >= wi["ci_high"]


def test_stats_command_prints_the_paper_table():
    from click.testing import CliRunner

    from gistnet.cli import cli

    done = CliRunner().invoke(cli, ["stats", "--tp", "12", "--fp", "1", "--tn", "14", "--fn", "2", "--ci", "wald"])
    assert done.exit_code == 0, done.stderr
    table = json.loads(done.stdout)
    assert table["ci_method"] == "wald"
    for name, (value, low, high) in PAPER.items():
        m = table["metrics"][name]
        assert (round(m["value"] * 100, 2), round(m["ci_low"] * 100, 2), round(m["ci_high"] * 100, 2)) == (value, low, high)
