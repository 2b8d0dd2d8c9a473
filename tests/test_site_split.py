"""Leave-one-site-out end to end: 3 synthetic sites, 32 px, 1 epoch, ResNet-34 (the session's
``site_run`` and ``site_data`` in tests/conftest.py, read-only)."""

import csv
import json

import pytest

from gistnet import config, pipeline
from gistnet.errors import ConfigError
from gistnet.evidence import report, sites
from tests.conftest import site_config

pytestmark = pytest.mark.e2e


def test_leave_one_site_out_report_has_sites_heterogeneity_subgroups_and_decision_curve(site_run):
    outcome, run = site_run
    trained_with = config.load_config(run / "config.yaml", environ={}).evaluate  # SITE_RUN_FLAGS
    assert list(trained_with.subgroups) == ["site"] and trained_with.min_subgroup == 20
    rep = json.loads((run / "report.json").read_text())
    report.validate(rep)
    assert rep == outcome.report and rep["status"] == "complete"
    assert rep["evaluation"]["method"] == "site" and rep["evaluation"]["folds"] == 3
    assert yaml_folds(run) == 3
    plan = json.loads((run / "split.json").read_text())
    assert [f["site"] for f in plan["folds"]] == ["site-A", "site-B", "site-C"]
    m = rep["models"]["resnet34"]
    assert [r["site"] for r in m["sites"]["per_site"]] == ["site-A", "site-B", "site-C"]
    assert all(r["n"] == 16 for r in m["sites"]["per_site"]) and sum(m["confusion_matrix"].values()) == 48
    meta = m["sites"]["meta_analysis"]
    usable = [r for r in m["sites"]["per_site"] if r["logit_auc"] is not None]
    again = sites.meta_analysis([r["site"] for r in usable], [r["logit_auc"]["value"] for r in usable],
                                [r["logit_auc"]["variance"] for r in usable])
    assert meta["pooled_auc"] == again["pooled_auc"] and meta["prediction_interval"]["df"] == 1
    rows = m["subgroups"]["columns"]["site"]
    assert [(r["value"], r["n"]) for r in rows] == [("site-A", 16), ("site-B", 16), ("site-C", 16)]
    assert all(r["sensitivity"]["value"] is None and "min_subgroup=20" in r["status"] for r in rows)
    dc = rep["decision_curve"]
    assert dc["thresholds"][0] == 0.05 and dc["thresholds"][-1] == 0.95 and set(dc["net_benefit"]) == {"resnet34"}
    md = (run / "report.md").read_text()
    assert "Leave-one-site-out" in md and "prediction interval for a new site" in md and "## Decision curve" in md
    html = (run / "report.html").read_text()
    assert 'id="sites-resnet34"' in html and 'id="fig-decision_curve"' in html and "very wide" in html
    assert "<p>Leave-one-site-out (internal-external) cross-validation over 3 sites" in html  # not "Hold-out"
    assert "Hold-out validation set" not in html and rep["evaluation"]["design"] in md
    checklist = (run / "checklist.md").read_text()
    assert "| Heterogeneity of performance across centres or other clusters | - | 12d, 23b | resnet34: per-site" \
        in checklist and "dataset.train" not in checklist
    prints = json.loads((run / "fingerprints.json").read_text())  # the development patients, by pseudonym
    ids = {r["patient_id"] for r in csv.DictReader((run / "predictions.csv").open())}
    assert set(prints["patients"]) == ids and len(ids) > 1 and len(prints["key_check"]) == 20


def yaml_folds(run):
    return config.load_config(run / "config.yaml", environ={}).split.folds


def test_unknown_subgroup_column_is_refused_before_training(site_data, tmp_path):
    with pytest.raises(ConfigError) as caught:
        pipeline.run(site_config(site_data, tmp_path, **{"evaluate.subgroups": ["sex"]}))
    assert "evaluate.subgroups: column(s) 'sex' not in" in str(caught.value)
    assert "manifest.csv (its covariate columns: site)" in str(caught.value)
    assert not (tmp_path / "s" / "config.yaml").exists()
