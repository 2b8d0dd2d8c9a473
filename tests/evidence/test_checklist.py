"""checklist.md: CLAIM 2024 / TRIPOD+AI items filled from the report, each pointing at a section that exists."""

import re

from gistnet.evidence import checklist
from gistnet.evidence import report_html
import pytest

from tests.evidence.test_report_html import FIGURES, kfold_report, sample_report


def rows(text: str, heading: str) -> list[list[str]]:
    part = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in part.splitlines()
            if line.startswith("| ") and not line.startswith("| item") and not line.startswith("| ---")]


@pytest.mark.parametrize("make_report", [sample_report, kfold_report], ids=["holdout", "kfold"])
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
    assert "brier 0.18" in by_topic["Calibration"][3] and "0.900 (0.500-1.300)" in by_topic["Calibration"][3]
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
