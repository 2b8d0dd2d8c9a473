"""report.html: self-contained, everything report.md has, evidence sections when present; opened in a real browser."""

import copy
import io
import re

from PIL import Image

from gistnet.evidence import compare
from gistnet.evidence import report
from gistnet.evidence import report_html
from tests.evidence.test_report import build, model_result


def png(colour: tuple[int, int, int], size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


FIGURES = {"training_curves": png((200, 0, 0)), "roc": png((0, 200, 0)), "augmentation_examples": png((0, 0, 200)),
           "gradcam_resnet34": png((200, 200, 0))}

EXPLAIN = {"method": "Grad-CAM (captum LayerGradCam)", "layer": "layer4", "images": 5, "misclassified_shown": 2,
           "randomisation_spearman": 0.81, "randomisation_images": 5, "randomisation_flagged": True,
           "note": "FLAG: the maps barely change when the weights are randomised"}


def sample_report(**extra) -> dict:
    m34, m50 = model_result(12, 1, 14, 2), model_result(11, 3, 12, 3)
    m34["explain"] = EXPLAIN
    rep = build({"resnet34": m34, "resnet50": m50})
    rep["dataset"]["skipped"] = [{"uri": "s3://b/data/GIST/<img src=x onerror=alert(1)>.png", "reason": "not an image"}]
    rep.update(copy.deepcopy(extra))
    return rep


def test_html_has_everything_report_md_has_and_embeds_every_figure():
    rep = sample_report()
    html = report_html.render(rep, FIGURES)
    for name, m in rep["models"].items():
        cm = m["confusion_matrix"]
        for cell in (f"TP {cm['tp']}", f"FP {cm['fp']}", f"FN {cm['fn']}", f"TN {cm['tn']}"):
            assert cell in html
        for metric in m["metrics"].values():
            assert report.percent_with_ci(metric) in html  # the same text as report.md
        assert f"{m['roc_auc']['value']:.3f}, {m['roc_auc']['ci_low']:.3f} to {m['roc_auc']['ci_high']:.3f}" in html
        assert m["checkpoint"]["sha256"] in html and f'id="model-{name}"' in html
    assert "Best model: resnet34" in html and "optimistic" in html
    assert html.count('src="data:image/png;base64,') == len(FIGURES)
    for png_bytes in FIGURES.values():
        assert report_html.png_data_uri(png_bytes) in html
    assert 'class="flag"' in html and "randomised" in html  # the flagged Grad-CAM check is shown as a warning


def test_html_is_self_contained_escaped_and_has_no_script():
    html = report_html.render(sample_report(), FIGURES)
    assert "<script" not in html.lower()
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img src=x" not in html
    assert "default-src 'none'" in html  # the page may not fetch anything even if a figure tried to
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls and all(u.startswith(("data:image/png;base64,", "#")) for u in urls)
    assert "@media print" in html


def kfold_report() -> dict:
    """A report shaped like a k-fold run's (schema v2): pooled metrics, per-fold rows, calibration,
    thresholds, a comparison, one unit missing."""
    rep = sample_report()
    rep["status"] = "partial"
    rep["dataset"] = {k: v for k, v in rep["dataset"].items() if k not in ("train", "val", "train_augmented")}
    rep["dataset"]["images"] = {"GIST": 69, "LM": 73}
    rep["evaluation"] = {"method": "kfold", "folds": 5, "pooled": True,
                         "finished": [{"fold": 0, "model": "resnet34"}], "missing": [{"fold": 4, "model": "resnet50"}]}
    for name, m in rep["models"].items():
        for key in ("history", "checkpoint"):
            m.pop(key)
        m["roc_auc"]["method"] = "delong"
        m["calibration"] = {"brier": 0.182, "intercept": -0.12, "slope": 0.87, "method": "logistic recalibration",
                            "bins": [{"predicted": 0.2, "observed": 0.25}], "note": ""}
        cm = m["confusion_matrix"]
        m["thresholds"] = {
            "primary": {"value": 0.5, "pre_specified": True, "confusion_matrix": cm, "metrics": m["metrics"]},
            "youden": {"exploratory": True, "chosen_on": "Youden's J on each fold's training part",
                       "values": [0.41, 0.47], "confusion_matrix": cm, "metrics": m["metrics"]}}
        m["folds"] = [{"fold": i, "n": 29, "confusion_matrix": cm, "roc_auc": 0.8 + i / 100, "accuracy": 0.75,
                       "sensitivity": 0.7, "specificity": 0.8, "youden_threshold": 0.4, "history": [{"epoch": 1}]}
                      for i in range(2)]
        m["across_folds"] = {"roc_auc": {"mean": 0.805, "sd": 0.007, "n_folds": 2},
                             **{k: {"mean": 0.75, "sd": 0.01, "n_folds": 2} for k in ("accuracy", "sensitivity",
                                                                                       "specificity")}}
    rep["comparison"] = {"models": ["resnet34", "resnet50"], "n_images": 142, "delong": {"z": 1.12, "p": 0.262},
                         "auc_difference": {"value": 0.05, "ci_low": -0.04, "ci_high": 0.14,
                                                                   "method": "paired stratified bootstrap"},
                         "mcnemar": {"statistic": 2.0, "p": 0.0004, "only_first_correct": 9,
                                                 "only_second_correct": 1}, "confidence_level": 0.95,
                         "interpretation": [
                             compare.interpretation("resnet34", "resnet50", 0.262, 0.05, "ROC AUC (DeLong)"),
                             compare.interpretation("resnet34", "resnet50", 0.0004, 0.05, "accuracy (McNemar)")]}
    return rep


def site_report() -> dict:
    """A leave-one-site-out run's report: 3 sites, each model's per-site table and meta-analysis."""
    import numpy as np

    from gistnet.evidence import sites

    rep = kfold_report()
    rep["status"] = "complete"
    rep["evaluation"] = {"method": "site", "folds": 3, "pooled": True,
                         "finished": [{"fold": f, "model": m} for f in range(3) for m in ("resnet34", "resnet50")],
                         "missing": []}
    rep["dataset"]["split_method"] = "leave-one-site-out"
    rng = np.random.default_rng(0)
    y = np.tile([1, 0], 30)
    for m in rep["models"].values():
        s = y * 1.0 + rng.normal(0, 1, 60)
        m["sites"] = sites.heterogeneity(["site-A"] * 20 + ["site-B"] * 20 + ["site-C"] * 20, y, 1 / (1 + np.exp(-s)),
                                         s, 0.5, "wilson", 0.95)
    return rep


def test_evidence_sections_render_when_present():
    rep = kfold_report()
    html = report_html.render(rep, {**FIGURES, "reliability_diagram": png((9, 9, 9))})
    for anchor in ("partial", "evaluation", "comparison", "model-resnet34-calibration", "model-resnet34-thresholds",
                   "model-resnet34-folds", "fig-reliability_diagram"):
        assert f'id="{anchor}"' in html
    assert "PARTIAL REPORT" in html and "resnet50 fold 4" in html
    assert "5-fold cross-validation" in html and "<td>69</td>" in html
    assert "Brier score 0.182" in html and "slope 0.87" in html and "(delong)" in html
    assert "Youden 0.410, 0.470 (exploratory)" in html and "0.5 (primary, pre-specified)" in html
    assert "<td>0.810</td>" in html and "roc auc 0.805 &plusmn; 0.007" in html
    assert "z = 1.12" in html and "statistic 2.00" in html
    assert ("<li>ROC AUC (DeLong): no evidence of a difference between resnet34 and resnet50 (p = 0.262); "
            "this does not show that they are equivalent</li>") in html
    assert "<li>Accuracy (McNemar): evidence that resnet34 and resnet50 differ (p = 0.0004 &lt; 0.05)</li>" in html
    assert html.count("no evidence of a difference") == 1  # each test worded once
    assert "0.050 (-0.040 to 0.140)" in html  # never "-0.040-0.140", which reads as one bound


def test_kfold_grad_cam_galleries_of_every_fold_sit_with_their_model():
    figures = {**FIGURES, "gradcam_resnet34_fold0": png((1, 2, 3)), "gradcam_resnet34_fold1": png((3, 2, 1))}
    html = report_html.render(kfold_report(), figures)
    section = html[html.index('id="model-resnet34"'):html.index('id="model-resnet50"')]
    for fold, colour in ((0, (1, 2, 3)), (1, (3, 2, 1))):
        assert report_html.png_data_uri(png(colour)) in section and f"Grad-CAM of resnet34, fold {fold}:" in section


def test_a_reliability_diagram_per_model_sits_with_its_model():
    html = report_html.render(sample_report(), {**FIGURES, "reliability_resnet34": png((9, 9, 9))})
    section = html[html.index('id="model-resnet34"'):html.index('id="model-resnet50"')]
    assert report_html.png_data_uri(png((9, 9, 9))) in section


def test_page_renders_in_a_real_browser_without_network_requests(tmp_path, chromium):
    rep = sample_report(comparison={"delong": {"z": 0.5, "p": 0.6}})
    page = tmp_path / "report.html"
    page.write_text(report_html.render(rep, FIGURES), encoding="utf-8")
    requests = chromium.load(page.as_uri())
    assert all(url == page.as_uri() or url.startswith("data:") for url in requests), requests
    assert chromium.evaluate("document.images.length") == len(FIGURES)
    assert chromium.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert chromium.evaluate("document.querySelectorAll('table').length") >= 6
    metrics_table = "document.querySelector('#model-resnet34 table.metrics').getBoundingClientRect().height"
    assert chromium.evaluate(metrics_table) > 50
    shot = Image.open(io.BytesIO(chromium.screenshot())).convert("RGB")
    assert shot.width >= 1000 and shot.height > 2000  # the whole page, not an empty viewport
    colours = {colour for _, colour in shot.getcolors(maxcolors=1 << 24)}
    # each embedded figure is a flat colour: seeing it in the screenshot proves the browser painted it
    for figure_colour in ((200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)):
        assert figure_colour in colours


def external_sample() -> dict:
    """An external evaluation's report (as serving/external.py builds it) from the hold-out sample."""
    from gistnet.evidence import external_report

    rep = sample_report()
    rep["dataset"] = {"uri": "s3://b/site-c", "classes": rep["dataset"]["classes"], "skipped": [],
                      "split_method": "external (none: every image is evaluated)", "images": {"GIST": 20, "LM": 20}}
    rep["evaluation"] = {"method": "external", "kind": "external", "folds": 1, "pooled": False, "finished": [],
                         "missing": []}
    for m in rep["models"].values():
        m["scoring"] = "single model"
        m["side_by_side"] = external_report.side_by_side(m, m, False)
        m["calibration"] = {"brier": 0.2, "intercept": -0.4, "slope": 1.3, "method": "logistic recalibration",
                            "note": ""}
        cm = m["confusion_matrix"]
        m["thresholds"] = {"primary": {"value": 0.5, "chosen_on": "pre-specified", "confusion_matrix": cm,
                                       "metrics": m["metrics"]},
                           "youden": {"value": 0.4, "values": [0.4], "chosen_on": "frozen", "confusion_matrix": cm,
                                      "metrics": m["metrics"]}}
    rep["selection"] = {"metric": "the development run's choice", "note": "external data chooses nothing"}
    rep["external"] = {"name": "site-c", "counts": {"scored": 44, "evaluated": 40, "excluded_development": 1,
                                                    "excluded_repeats": 3, "unusable": 0},
                       "overlap": {"method": "sha256", "status": "1 of 44 images are development images"},
                       "clustered": False}
    return report.describe(rep)


def test_each_evaluation_kind_has_its_own_title_design_and_caveat_in_json_md_and_html():
    """Hold-out, k-fold, leave-one-site-out and external reports each say what they are: an external
    report is not titled, designed or cautioned as a hold-out run (issue 31, item 20)."""
    from markupsafe import escape

    from gistnet.evidence import external_report

    kinds = {"holdout": sample_report(), "kfold": kfold_report(), "site": site_report(), "external": external_sample()}
    expected = {"holdout": ("gistnet run ", "Hold-out validation set", "a validation-set audit"),
                "kfold": ("gistnet run ", "5-fold cross-validation", "a cross-validation audit"),
                "site": ("gistnet run ", "Leave-one-site-out (internal-external) cross-validation over 3 sites",
                         "an internal-external (leave-one-site-out) cross-validation"),
                "external": ("External evaluation site-c of run ", "External evaluation: 40 images from",
                             "an external evaluation")}
    designs = set()
    for kind, rep in kinds.items():
        report.describe(rep)
        title, design, caveat = expected[kind]
        w = report.words(rep)
        assert w["kind"] == kind and w["title"].startswith(title) and w["design"].startswith(design)
        assert caveat in w["caveat"] and rep["evaluation"]["design"] == w["design"]  # report.json
        assert rep["evaluation"]["caveat"] == w["caveat"]
        designs.add(w["design"])
        md = external_report.markdown(rep) if kind == "external" else report.markdown(rep)
        assert md.startswith(f"# {w['title']}") and w["design"] in md and w["caveat"] in md
        html = report_html.render(rep, FIGURES)
        assert f"<title>{w['title']}</title>" in html and f"<h1>{w['title']}</h1>" in html
        assert f"<p>{escape(w['design'])}</p>" in html and f'<p class="caveat">{escape(w["caveat"])}</p>' in html
        assert ("Hold-out validation set" in html) == (kind == "holdout")
    assert len(designs) == 4
    ext = report_html.render(kinds["external"], FIGURES)
    evaluation = ext[ext.index('id="evaluation"'):ext.index("</section>", ext.index('id="evaluation"'))]
    assert "pooled" not in evaluation and "finished" not in evaluation and "missing" not in evaluation
    assert "independent test set before clinical use" not in ext
    assert "1 of 44 images are development images." in evaluation  # what was excluded, and why
    assert "<th scope=\"row\">excluded repeats</th><td>3</td>" in evaluation
