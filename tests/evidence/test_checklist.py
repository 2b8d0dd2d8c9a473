"""checklist.md: CLAIM 2024 / TRIPOD+AI items filled from the report, each pointing at a section that exists."""

import re

from gistnet.evidence import checklist
from gistnet.evidence import report_html
import pytest

from tests.evidence.test_report_html import FIGURES, kfold_report, sample_report, site_report


def rows(text: str, heading: str) -> list[list[str]]:
    part = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in part.splitlines()
            if line.startswith("| ") and not line.startswith("| item") and not line.startswith("| ---")]


@pytest.mark.parametrize("make_report", [sample_report, kfold_report, site_report], ids=["holdout", "kfold", "site"])
def test_every_filled_item_points_at_a_section_that_exists_in_report_html(make_report):
    rep = make_report()
    html = report_html.render(rep, FIGURES)
    text = checklist.markdown(rep)
    filled = rows(text, "## Filled by the job")
    assert len(filled) == len(checklist.JOB_ITEMS)
    topics = {r[0] for r in filled}
    for topic in ("Data source", "Counts", "Split", "Preprocessing", "Augmentation", "Model", "Training",
                  "Metrics with confidence intervals", "Calibration", "Explainability", "Failure analysis",
                  "Software versions"):
        assert topic in topics
    for row in filled:
        if row[3].startswith("not in this report"):
            continue
        anchor = re.search(r"report\.html#([\w-]+)", row[4]).group(1)
        assert f'id="{anchor}"' in html, (row[0], anchor)


def test_items_reflect_the_run_and_what_it_did_not_compute():
    rep = sample_report()
    text = checklist.markdown(rep)
    by_topic = {r[0]: r for r in rows(text, "## Filled by the job")}
    assert "16 GIST" not in by_topic["Counts"][3] and "55 GIST, 58 LM" in by_topic["Counts"][3]
    assert "0.857 (" in by_topic["Metrics with confidence intervals"][3]  # resnet34 sensitivity 12/14 with its CI
    assert "FLAGGED" in by_topic["Explainability"][3]
    assert by_topic["Calibration"][3].startswith("resnet34: brier 0.0928")  # schema v2: every model has one
    assert by_topic["Comparison of the models"][3].startswith("not in this report")
    assert by_topic["Cross-validation"][3].startswith("not in this report")
    rep["models"]["resnet34"]["calibration"] = {"brier": 0.18, "slope": {"value": 0.9, "ci_low": 0.5, "ci_high": 1.3}}
    rep["comparison"] = {"delong": {"z": 1.0, "p": 0.31}}
    by_topic = {r[0]: r for r in rows(checklist.markdown(rep), "## Filled by the job")}
    assert "brier 0.18" in by_topic["Calibration"][3] and "0.900 (0.500 to 1.300)" in by_topic["Calibration"][3]
    assert "DeLong p = 0.31" in by_topic["Comparison of the models"][3]


def test_items_only_the_authors_can_fill_are_listed_as_such():
    text = checklist.markdown(sample_report())
    authors = rows(text, "## To be filled by the authors")
    assert len(authors) == len(checklist.AUTHOR_ITEMS)
    assert any("Reference standard" in r[0] for r in authors) and any("Ethics" in r[0] for r in authors)
    assert "not complete until they are" in text


def test_kfold_items_name_the_folds_and_a_missing_unit():
    by_topic = {r[0]: r for r in rows(checklist.markdown(kfold_report()), "## Filled by the job")}
    assert "5-fold cross-validation" in by_topic["Cross-validation"][3] and "partial" in by_topic["Cross-validation"][3]
    assert "69 GIST, 73 LM" in by_topic["Counts"][3]


def test_site_items_describe_leave_one_site_out_and_fill_the_heterogeneity_items():
    """A leave-one-site-out run: no pointer to dataset.train/val (it has none), its own design words,
    and TRIPOD+AI 12d/23b filled from the meta-analysis it computed, not left to the authors."""
    rep = site_report()
    text = checklist.markdown(rep)
    by_topic = {r[0]: r for r in rows(text, "## Filled by the job")}
    assert "dataset.train" not in text and "dataset.val`" not in text
    assert by_topic["Split"][3].startswith("leave-one-site-out: each of the 3 sites is held out once")
    assert "not stratified by class" in by_topic["Split"][3] and "stratified by class," not in by_topic["Split"][3]
    assert by_topic["Cross-validation"][3].startswith("leave-one-site-out (internal-external) cross-validation over 3 "
                                                      "sites") and "3-fold" not in text
    row = by_topic[checklist.HETEROGENEITY]
    assert row[2] == "12d, 23b" and "report.html#sites-resnet34" in row[4] and "`models.resnet34.sites`" in row[4]
    meta = rep["models"]["resnet34"]["sites"]["meta_analysis"]
    assert f"pooled AUC {meta['pooled_auc']['value']:.3f} (" in row[3] and f"I^2 {meta['i2'] * 100:.0f}%" in row[3]
    authors = [r[0] for r in rows(text, "## To be filled by the authors")]
    assert checklist.HETEROGENEITY not in authors and len(authors) == len(checklist.AUTHOR_ITEMS) - 1
    assert checklist.HETEROGENEITY in [r[0] for r in rows(checklist.markdown(kfold_report()),
                                                          "## To be filled by the authors")]


# The published CLAIM 2024 list (Tejani et al., Radiol Artif Intell 2024), number -> a word of its
# topic, and the TRIPOD+AI items (Collins et al., BMJ 2024;385:e078378): an independent copy.
PUBLISHED_CLAIM = {1: "title", 2: "abstract", 3: "background", 4: "objectives", 5: "prospective", 6: "goal",
                   7: "sources", 8: "inclusion", 9: "preprocessing", 10: "subsets", 11: "de-identification",
                   12: "missing", 13: "acquisition", 14: "reference standard", 15: "rationale", 16: "annotators",
                   17: "test set", 18: "rater", 19: "partitions", 20: "separation", 21: "sample size",
                   22: "model description", 23: "software", 24: "initialisation", 25: "training", 26: "final model",
                   27: "ensembling", 28: "metrics", 29: "significance", 30: "robustness", 31: "explainability",
                   32: "internal data", 33: "external data", 34: "registration", 35: "patients or examinations",
                   36: "demographic", 37: "uncertainty", 38: "diagnostic accuracy", 39: "failure analysis",
                   40: "limitations", 41: "implications", 42: "protocol", 43: "availability", 44: "funding"}
PUBLISHED_TRIPOD = {"1", "2", "3a", "3b", "3c", "4", "5a", "5b", "6a", "6b", "6c", "7", "8a", "8b", "8c", "9a", "9b",
                    "9c", "10", "11", "12a", "12b", "12c", "12d", "12e", "12f", "12g", "13", "14", "15", "16", "17",
                    "18a", "18b", "18c", "18d", "18e", "18f", "19", "20a", "20b", "20c", "21", "22", "23a", "23b", "24",
                    "25", "26", "27a", "27b", "27c"}


def _tripod_items(cell: str) -> set[str]:
    items = set()
    for part in cell.replace(" (with the code)", "").split(", "):
        if part == "-":
            continue
        if "-" in part:  # a range such as 8a-8c or 18a-18d
            first, last = part.split("-")
            number = first.rstrip("abcdefg")
            items |= {number + c for c in "abcdefg" if first[-1] <= c <= last[-1]}
        else:
            items.add(part)
    return items


def test_claim_and_tripod_items_carry_their_published_numbers():
    assert sorted(checklist.CLAIM_2024) == list(range(1, 45))
    for number, word in PUBLISHED_CLAIM.items():
        assert word in checklist.CLAIM_2024[number].lower(), number
    every = [(t, n, tripod) for t, n, tripod, *_ in checklist.JOB_ITEMS] + list(checklist.AUTHOR_ITEMS)
    for topic, numbers, tripod in every:
        assert set(numbers) <= set(range(1, 45)), topic
        assert _tripod_items(tripod) <= PUBLISHED_TRIPOD, (topic, tripod)
    items = {t: (n, tripod) for t, n, tripod in every}
    assert items["Counts"][0] == (35,)  # numbers of patients or examinations included and excluded
    assert items["Cross-validation"][0] == (32,) and "23b" not in items["Cross-validation"][1]
    assert "23b" in items["Heterogeneity of performance across centres or other clusters"][1]
    text = checklist.markdown(sample_report())
    by_topic = {r[0]: r for r in rows(text, "## Filled by the job")}
    assert by_topic["Counts"][1] == "#35 numbers of patients or examinations included and excluded"
    assert by_topic["Cross-validation"][1] == "#32 evaluation on internal data"


def _resolve(report: dict, path: str):
    node = report
    for key in path.split("."):
        assert isinstance(node, dict) and key in node, path
        node = node[key]
    return node


@pytest.mark.parametrize("make_report", [sample_report, kfold_report, site_report], ids=["holdout", "kfold", "site"])
def test_every_rows_pointer_resolves_in_that_runs_report_json(make_report):
    from gistnet import config

    rep = make_report()
    rep["config"] = config.load_config(None, {}, environ={}).to_dict()  # a run's resolved configuration
    filled = rows(checklist.markdown(rep), "## Filled by the job")
    pointed = 0
    for row in filled:
        if row[3].startswith("not in this report"):
            assert row[4] == "-"
            continue
        where = row[4].split("`report.json`:", 1)[1]
        for path in re.findall(r"`([^`]+)`", where):
            assert _resolve(rep, path) is not None, (row[0], path)
            pointed += 1
    assert pointed >= len(filled)


def test_every_rows_pointer_resolves_in_an_aggregated_kfold_run(tmp_path):
    """The rows of a real k-fold aggregation (no dataset.train or dataset.val there)."""
    import json

    from gistnet.data import runs
    from gistnet.evidence import aggregate as aggregation
    from tests.evidence.test_aggregate import fake_unit, seeded_kfold_run

    images, cfg, out, plan = seeded_kfold_run(tmp_path / "run", models="resnet34")
    for i, unit in enumerate(runs.all_units(cfg)):
        fake_unit(out, unit, images, plan.part(unit.fold), cfg, seed=i)
    aggregation.aggregate(out, cfg, "r", str(tmp_path))
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    text = (tmp_path / "run" / "checklist.md").read_text()
    for row in rows(text, "## Filled by the job"):
        if row[4] != "-":
            for path in re.findall(r"`([^`]+)`", row[4].split("`report.json`:", 1)[1]):
                _resolve(rep, path)
    assert "dataset.train" not in text and "dataset.val`" not in text


def test_an_interval_reads_low_to_high_never_as_one_negative_bound():
    rep = sample_report()
    rep["comparison"] = {"auc_difference": {"value": -0.029, "ci_low": -0.075, "ci_high": 0.011}}
    by_topic = {r[0]: r for r in rows(checklist.markdown(rep), "## Filled by the job")}
    assert "AUC difference -0.029 (-0.075 to 0.011)" in by_topic["Comparison of the models"][3]
    assert "-0.075-0.011" not in checklist.markdown(rep)
