"""The external report's frozen-threshold tables use the same (clustered) intervals as its metrics."""

import numpy as np

from gistnet.evidence import evaluate, external_report


def test_frozen_threshold_intervals_are_clustered_like_the_reports_metrics():
    rng = np.random.default_rng(3)
    per_patient = rng.integers(0, 2, 30)
    labels = np.repeat(per_patient, 3)  # three copies of each patient's image
    probabilities = np.repeat(per_patient * 0.4 + rng.uniform(0, 0.6, 30), 3)
    patients = np.repeat([f"p{i}" for i in range(30)], 3)
    table = external_report.at_threshold(labels, probabilities, 0.5, "wilson", 0.95, "pre-specified", patients)
    report = evaluate.diagnostic_report(labels, probabilities, "wilson", 0.95, 0.5, clusters=patients)
    assert table["metrics"] == report["metrics"]
    per_image = external_report.at_threshold(labels, probabilities, 0.5, "wilson", 0.95, "pre-specified")
    widths = [(m["ci_high"] - m["ci_low"]) / (per_image["metrics"][k]["ci_high"] - per_image["metrics"][k]["ci_low"])
              for k, m in table["metrics"].items()]
    assert min(widths) > 1.2  # three copies of each patient: the per-image interval is too narrow


def test_wording_names_the_intercept_the_reason_an_interval_is_missing_and_the_unit():
    """Issue 31 item 18: which intercept, why an interval is n/a, images (not patients) in the decision
    curve, and the McNemar method the comparison used."""
    from gistnet.evidence import decision, report_html
    from tests.evidence.test_report_html import FIGURES, external_sample, kfold_report

    rep = external_sample()
    m = rep["models"]["resnet34"]
    m["metrics"]["npv"] = {"value": 1.0, "ci_low": None, "ci_high": None, "numerator": 1, "denominator": 1,
                           "note": "one patient: no between-patient variance"}
    m["side_by_side"] = external_report.side_by_side(m, m, False)
    npv = next(r for r in m["side_by_side"]["rows"] if r["metric"] == "npv")
    assert npv["external"]["note"] == "one patient: no between-patient variance"
    md = external_report.markdown(rep)
    assert "interval n/a (one patient: no between-patient variance)" in md and "not estimable" not in md
    assert "calibration-in-the-large -0.400 (the logistic intercept with the slope fixed at 1" in md
    assert "intercept -0.400" not in md
    assert "per image" in decision.HOW_TO_READ and "per patient" not in decision.HOW_TO_READ
    k = kfold_report()
    k["comparison"]["mcnemar"]["method"] = "clustered (Durkalski), patients as clusters"
    html = report_html.render(k, FIGURES)
    assert "McNemar's test (clustered (Durkalski), patients as clusters)" in html and "McNemar's exact" not in html
