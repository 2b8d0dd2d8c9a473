"""Subgroups: per value counts and metrics recomputed directly, small and missing groups n/a."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from gistnet.errors import ConfigError
from gistnet.evidence import subgroups


def _data():
    rng = np.random.default_rng(3)
    n = 60
    y = rng.integers(0, 2, n)
    s = y * 1.2 + rng.standard_normal(n)
    p = 1 / (1 + np.exp(-s))
    sex = ["F" if i % 2 else "M" for i in range(n)]
    sex[:3] = ["X", "X", ""]  # a group of 2 and one missing value
    return y, p, s, [{"sex": v} for v in sex]


def test_each_value_recomputed_directly():
    y, p, s, cov = _data()
    section = subgroups.subgroups(["sex"], cov, y, p, s, 0.5, "wilson", 0.95, min_n=5)
    rows = {r["value"]: r for r in section["columns"]["sex"]}
    assert [r["value"] for r in section["columns"]["sex"]] == ["F", "M", "X", subgroups.MISSING]
    assert sum(r["n"] for r in rows.values()) == len(y)  # nothing dropped
    for value in ("F", "M"):
        idx = np.array([i for i, c in enumerate(cov) if c["sex"] == value])
        yy, pp = y[idx], p[idx]
        tp = int(((pp >= 0.5) & (yy == 1)).sum())
        tn = int(((pp < 0.5) & (yy == 0)).sum())
        assert rows[value]["n"] == len(idx)
        assert rows[value]["sensitivity"]["value"] == pytest.approx(tp / (yy == 1).sum())
        assert rows[value]["specificity"]["value"] == pytest.approx(tn / (yy == 0).sum())
        assert rows[value]["roc_auc"]["value"] == pytest.approx(roc_auc_score(yy, s[idx]))
        assert rows[value]["sensitivity"]["ci_low"] < rows[value]["sensitivity"]["value"]
    assert rows["X"]["n"] == 2 and rows["X"]["roc_auc"]["value"] is None and "min_subgroup=5" in rows["X"]["status"]
    assert rows[subgroups.MISSING]["n"] == 1 and rows[subgroups.MISSING]["status"] == "n/a: no value recorded"
    assert "| X | 2 |" in subgroups.markdown(section)


def test_an_entirely_empty_column_gives_na_rows_not_a_crash():
    y, p, s, _ = _data()
    section = subgroups.subgroups(["site_notes"], [{"site_notes": ""}] * len(y), y, p, s, 0.5, "wilson", 0.95, 5)
    (row,) = section["columns"]["site_notes"]
    assert row["value"] == subgroups.MISSING and row["n"] == len(y) and row["sensitivity"]["value"] is None


def test_unknown_column_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="'size_band'.*manifest.csv.*sex"):
        subgroups.check_columns(["sex", "size_band"], ["sex"], "manifest.csv")
    subgroups.check_columns(["sex"], ["sex", "site"], "manifest.csv")
