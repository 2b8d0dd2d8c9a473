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
