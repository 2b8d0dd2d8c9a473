"""Subgroup and per-site intervals clustered by patient (issue 21): as for the main metrics
(tests/evidence/test_clustered.py, issue 20 item 1), three identical images per patient leave
every subgroup and per-site interval, and the meta-analysis of the per-site logit AUCs (now on
Obuchowski's clustered variance), within 10% of the one-image-per-patient widths, while counting
the images as independent would narrow them."""

import numpy as np
import pytest

from gistnet.evidence import sections, sites, subgroups
from tests.evidence.test_clustered import triple, width

N = 90


def patients_90(seed=5):
    """90 patients, one image each: two sexes, three sites, both classes everywhere."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(N) % 2).astype(int)
    scores = labels * 1.3 + rng.normal(size=N)
    sex = ["F" if i % 3 else "M" for i in range(N)]
    site = [f"site-{'ABC'[i % 3]}" for i in (np.arange(N) // 2)]
    return labels, scores, sex, site, [f"patient-{i:02d}" for i in range(N)]


def _intervals(labels, scores, sex, site, clusters, ci_method):
    p = 1 / (1 + np.exp(-scores))
    cov = [{"sex": v} for v in sex]
    sub = subgroups.subgroups(["sex"], cov, labels, p, scores, 0.5, ci_method, 0.95, 5, clusters)
    het = sites.heterogeneity(site, labels, p, scores, 0.5, ci_method, 0.95, clusters)
    out = {}
    for row in sub["columns"]["sex"]:
        out.update({f"sex={row['value']} {k}": row[k] for k in ("sensitivity", "specificity", "roc_auc")})
    for row in het["per_site"]:
        out.update({f"{row['site']} {k}": row[k] for k in ("sensitivity", "specificity", "accuracy", "roc_auc")})
    out["pooled AUC"] = het["meta_analysis"]["pooled_auc"]
    return out, sub, het


@pytest.mark.parametrize("ci_method", ["wilson", "clopper-pearson"])
def test_triplicating_every_image_leaves_subgroup_and_site_intervals_within_ten_percent(ci_method):
    labels, scores, sex, site, patients = patients_90()
    original, sub1, het1 = _intervals(labels, scores, sex, site, patients, ci_method)
    tripled, sub3, het3 = _intervals(triple(labels), triple(scores), list(triple(sex)), list(triple(site)),
                                     list(triple(patients)), ci_method)
    naive, _, _ = _intervals(triple(labels), triple(scores), list(triple(sex)), list(triple(site)), None, ci_method)
    assert len(original) == 2 * 3 + 3 * 4 + 1
    for name, before in original.items():
        after = tripled[name]
        assert after["value"] == pytest.approx(before["value"]), name
        assert 0.9 <= width(after) / width(before) <= 1.1, (name, width(before), width(after))
        if name != "pooled AUC":  # (its random-effects tau^2 grows as naive per-site variances shrink)
            assert width(naive[name]) / width(before) < 0.8, name  # counting images as patients narrows it
    # the per-site logit AUC variances the meta-analysis weighs: Obuchowski's, about the original DeLong
    for one, three in zip(het1["per_site"], het3["per_site"]):
        assert one["logit_auc"]["variance_method"] == sites.DELONG
        assert three["logit_auc"]["variance_method"] == sites.OBUCHOWSKI
        assert 0.8 <= three["logit_auc"]["variance"] / one["logit_auc"]["variance"] <= 1.2
        assert three["unit_of_analysis"] == "per image, clustered by patient: 30 patients, 90 images"
    assert het3["meta_analysis"]["auc_variance"] == sites.OBUCHOWSKI and het3["clustered"]
    assert het1["meta_analysis"]["auc_variance"] == sites.DELONG and not het1["clustered"]
    assert het3["unit_of_analysis"] == "per image, clustered by patient: 90 patients, 270 images"
    assert sub3["clustered"] and sub3["unit_of_analysis"] == het3["unit_of_analysis"]
    assert {r["unit_of_analysis"] for r in sub3["columns"]["sex"]} == {
        "per image, clustered by patient: 60 patients, 180 images", "per image, clustered by patient: 30 patients, "
        "90 images"}
    assert "every interval is clustered by patient" in subgroups.markdown(sub3)
    assert "each site's AUC variance is Obuchowski's" in sites.markdown(het3)


def test_a_perfect_site_with_repeated_images_gets_the_correction_on_patient_counts():
    labels = np.array([1, 1, 0, 0, 1, 0] * 3)
    scores = np.array([2.0, 3.0, -1.0, -2.0, 4.0, -3.0] * 3)
    patients = [f"p{i}" for i in range(6)] * 3  # each patient three times
    one = sites.logit_auc(labels, scores, patients)
    assert one["corrected"] and one["variance_method"] == sites.OBUCHOWSKI
    m, n = 9, 9  # images; the Mann-Whitney count stays per image, the variance counts 3 + 3 patients
    auc = (m * n + 0.5) / (m * n + 1)
    assert one["auc"] == pytest.approx(auc)
    assert one["variance"] == pytest.approx(sites.hanley_mcneil_variance(auc, 3, 3))


def test_the_sections_pass_the_pooled_patient_ids():
    labels, scores, sex, site, patients = patients_90()

    class Pooled:
        keys = [f"k{i}" for i in range(3 * N)]

    pooled = Pooled()
    pooled.labels, pooled.scores = triple(labels), triple(scores)
    pooled.probabilities = 1 / (1 + np.exp(-pooled.scores))
    pooled.clusters = list(triple(patients))
    covariates = {k: {"site": s, "sex": x} for k, s, x in zip(pooled.keys, triple(site), triple(sex))}

    class Cfg:
        confidence_level, ci_method, subgroups, min_subgroup = 0.95, "wilson", ("sex",), 5
        meta_analysis_interval = "auto"

    models = {"resnet34": {}}
    sections.add(models, {"resnet34": pooled}, Cfg, covariates, with_sites=True)
    assert models["resnet34"]["sites"]["clustered"] and models["resnet34"]["subgroups"]["clustered"]
