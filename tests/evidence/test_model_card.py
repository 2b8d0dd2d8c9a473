"""model_card.md: written with the report for each trained model, in the Hugging Face
sections, with the report's own numbers."""

import json

import pytest

from gistnet.evidence import model_card
from gistnet.evidence import stats
from gistnet.evidence.report import percent_with_ci

pytestmark = pytest.mark.e2e

SECTIONS = ("## Model details", "## Intended use", "## Training data", "## Preprocessing", "## Training procedure",
            "## Evaluation", "## Limitations", "## How to reproduce")


def test_each_model_gets_a_card_with_the_reports_numbers(tiny_runs):
    run = tiny_runs / "a"
    report = json.loads((run / "report.json").read_text())
    card = (run / "resnet34" / model_card.CARD).read_text()
    assert report["artifacts"]["model_card_resnet34"] == str(run / "resnet34" / model_card.CARD)
    assert card.startswith("---\n") and "pipeline_tag: image-classification" in card
    assert [card.index(s) for s in SECTIONS] == sorted(card.index(s) for s in SECTIONS)
    assert "**Not for diagnosis.**" in card
    m = report["models"]["resnet34"]
    assert m["checkpoint"]["sha256"] in card
    assert "Validation images: 4 GIST, 4 LM" in card and "Training images: 16 GIST, 16 LM" in card
    for name in stats.METRICS:
        assert f"| {name} | {percent_with_ci(m['metrics'][name])} |" in card
    assert "binomial wilson intervals" in card and "DeLong" in card
    assert "Resize the shorter side to 32 px" in card
    assert f"--run-id {report['run_id']}-repro --models resnet34" in card
