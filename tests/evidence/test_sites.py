"""Site heterogeneity: the meta-analysis and the per-site logit AUCs recomputed by hand."""

import math

import numpy as np
import pytest
from scipy.stats import t as student_t

from gistnet.evidence import sites


def _dl_by_hand(y, v):
    """DerSimonian-Laird, written out from the textbook formulas (not statsmodels)."""
    y, v = np.asarray(y, float), np.asarray(v, float)
    k = len(y)
    w = 1 / v
    mu_fe = (w * y).sum() / w.sum()
    q = (w * (y - mu_fe) ** 2).sum()
    c = w.sum() - (w ** 2).sum() / w.sum()
    tau2 = max(0.0, (q - (k - 1)) / c)
    ws = 1 / (v + tau2)
    mu = (ws * y).sum() / ws.sum()
    se = math.sqrt(1 / ws.sum())
    i2 = max(0.0, (q - (k - 1)) / q)
    half = student_t.ppf(0.975, k - 2) * math.sqrt(tau2 + se ** 2)
    return mu, se, tau2, i2, q, mu - half, mu + half


def _hksj_by_hand(y, v):
    """Hartung-Knapp-Sidik-Jonkman from its definition (IntHout et al. 2014): the DL weights,
    the variance from their weighted residuals (scale q* at least 1, Knapp & Hartung 2003),
    t with k-1 df."""
    y, v = np.asarray(y, float), np.asarray(v, float)
    mu, _, tau2, *_ = _dl_by_hand(y, v)
    w = 1 / (v + tau2)
    scale = (w * (y - mu) ** 2).sum() / (len(y) - 1)
    se = math.sqrt(max(1.0, scale) / w.sum())
    half = student_t.ppf(0.975, len(y) - 1) * se
    return se, _expit(mu - half), _expit(mu + half)


def _expit(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("effects, variances", [
    ([0.4, 1.6, 2.5, 0.9], [0.10, 0.20, 0.15, 0.08]),  # heterogeneous: tau^2 > 0
    ([1.0, 1.1, 0.95], [0.3, 0.25, 0.4]),  # homogeneous: Q < df, tau^2 truncated at 0
])
def test_meta_analysis_matches_hand_computation(effects, variances):
    k = len(effects)
    mu, se, tau2, i2, q, low, high = _dl_by_hand(effects, variances)
    meta = sites.meta_analysis(["a", "b", "c", "d"][:len(effects)], effects, variances)
    assert meta["pooled_logit"] == pytest.approx(mu)
    assert meta["pooled_logit_se"] == pytest.approx(se)
    assert meta["tau2"] == pytest.approx(tau2) and meta["tau2"] >= 0
    assert meta["i2"] == pytest.approx(i2)
    assert meta["q"] == pytest.approx(q)
    assert meta["pooled_auc"]["value"] == pytest.approx(_expit(mu))
    dl = meta["intervals"]["dl"]
    assert dl["ci_low"] == pytest.approx(_expit(mu - 1.959963985 * se))
    assert dl["ci_high"] == pytest.approx(_expit(mu + 1.959963985 * se))
    # fewer than 10 sites: the pooled interval is HKSJ's, stated
    hk_se, hk_low, hk_high = _hksj_by_hand(effects, variances)
    assert meta["interval"] == "hksj" and meta["pooled_auc"] == meta["intervals"]["hksj"]
    assert meta["intervals"]["hksj"]["se_logit"] == pytest.approx(hk_se) and meta["intervals"]["hksj"]["df"] == k - 1
    assert (meta["pooled_auc"]["ci_low"], meta["pooled_auc"]["ci_high"]) == pytest.approx((hk_low, hk_high))
    assert "the default with fewer than 10 sites" in meta["interval_choice"]
    chosen = sites.meta_analysis(["a", "b", "c", "d"][:k], effects, variances, interval="dl")
    assert chosen["pooled_auc"] == dl and chosen["interval_choice"].endswith("(evaluate.meta_analysis_interval: dl)")
    assert meta["prediction_interval"]["ci_low"] == pytest.approx(_expit(low))
    assert meta["prediction_interval"]["ci_high"] == pytest.approx(_expit(high))
    assert meta["prediction_interval"]["df"] == len(effects) - 2


def test_two_sites_have_no_prediction_interval():
    meta = sites.meta_analysis(["a", "b"], [0.5, 1.0], [0.1, 0.1])
    assert meta["prediction_interval"]["ci_low"] is None and "at least 3 sites" in meta["prediction_interval"]["note"]


def test_logit_auc_by_hand():
    # positives 0.9, 0.8, 0.3; negatives 0.5, 0.1: pairs won 5 of 6 -> AUC 5/6
    y = np.array([1, 1, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.3, 0.5, 0.1])
    one = sites.logit_auc(y, s)
    assert one["auc"] == pytest.approx(5 / 6) and not one["corrected"]
    # DeLong by its placement values: V10 (positives) = (1, 1, 0.5), V01 (negatives) = (2/3, 1)
    v10, v01 = np.array([1, 1, 0.5]), np.array([2 / 3, 1.0])
    var = v10.var(ddof=1) / 3 + v01.var(ddof=1) / 2
    assert one["variance"] == pytest.approx(var)
    assert one["logit"] == pytest.approx(math.log(5))
    assert one["variance_logit"] == pytest.approx(var / (5 / 36) ** 2)


def test_perfect_site_gets_the_stated_continuity_correction():
    y = np.array([1, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.2, 0.1])
    one = sites.logit_auc(y, s)
    a = 4.5 / 5  # (U + 0.5) / (m n + 1), U = 4
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    hm = (a * (1 - a) + (2 - 1) * (q1 - a * a) + (2 - 1) * (q2 - a * a)) / 4
    assert one["corrected"] and one["auc"] == pytest.approx(a) and one["variance"] == pytest.approx(hm)
    assert sites.logit_auc(y, -s)["auc"] == pytest.approx(0.5 / 5)  # AUC 0 the same way


def three_sites(rng):
    """Sites A, B and C of 30 images each, every one with its own AUC: (sites, labels, scores)."""
    site_of, y, s = [], [], []
    for site, n, shift in (("A", 30, 1.5), ("B", 30, 0.5), ("C", 30, 1.0)):
        labels = rng.integers(0, 2, n)
        site_of += [site] * n
        y += labels.tolist()
        s += (labels * shift + rng.standard_normal(n)).tolist()
    return site_of, y, s


def test_heterogeneity_section_states_one_class_and_corrected_sites():
    site_of, y, s = three_sites(np.random.default_rng(0))
    site_of += ["D"] * 4 + ["E"] * 4
    y += [1, 1, 1, 1] + [1, 1, 0, 0]
    s += [0.3, 0.2, 0.1, 0.0] + [3.0, 2.0, -1.0, -2.0]
    p = 1 / (1 + np.exp(-np.array(s)))
    section = sites.heterogeneity(site_of, y, p, s, 0.5, "wilson", 0.95)
    rows = {r["site"]: r for r in section["per_site"]}
    assert rows["D"]["roc_auc"]["value"] is None and rows["D"]["note"] == sites.ONE_CLASS
    assert rows["D"]["specificity"]["value"] is None and rows["D"]["n"] == 4
    assert rows["E"]["note"] == sites.CORRECTION
    meta = section["meta_analysis"]
    assert meta["k"] == 4 and meta["sites"] == ["A", "B", "C", "E"]
    assert meta["left_out"] == [{"site": "D", "reason": sites.ONE_CLASS}] and meta["corrected"] == ["E"]
    text = sites.markdown(section)
    assert "prediction interval for a new site" in text and "Site D left out" in text


def test_a_site_whose_variance_cannot_be_estimated_is_left_out_not_corrected():
    # one positive outranking 5 of 8 negatives: AUC 0.625, a DeLong variance of one value is undefined
    y = np.array([1] + [0] * 8)
    s = np.array([0.5, 0.1, 0.2, 0.3, 0.4, 0.45, 0.6, 0.7, 0.8])
    one = sites.logit_auc(y, s)
    assert one["auc"] == pytest.approx(0.625) and not one["corrected"]
    assert one["variance"] is None and "one positive image" in one["excluded"]
    # clustered: three positive images of one patient (they outrank 4, 6 and 0 of 6 negatives: AUC 10/18)
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0])
    s = np.array([0.5, 0.9, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7])
    ids = ["p1", "p1", "p1", "n1", "n1", "n2", "n3", "n4", "n4"]
    one = sites.logit_auc(y, s, ids)
    assert one["auc"] == pytest.approx((4 + 6 + 0) / 18) and not one["corrected"]
    assert "one patient with a positive image" in one["excluded"] and one["variance_method"] == sites.OBUCHOWSKI


def test_heterogeneity_leaves_out_a_site_without_a_variance_with_its_reason():
    site_of, y, s = three_sites(np.random.default_rng(1))
    site_of += ["F"] * 9
    y += [1] + [0] * 8
    s += [0.5, 0.1, 0.2, 0.3, 0.4, 0.45, 0.6, 0.7, 0.8]
    p = 1 / (1 + np.exp(-np.array(s)))
    section = sites.heterogeneity(site_of, y, p, s, 0.5, "wilson", 0.95)
    rows = {r["site"]: r for r in section["per_site"]}
    meta = section["meta_analysis"]
    assert meta["sites"] == ["A", "B", "C"] and meta["corrected"] == [] and "correction" not in meta
    [left] = meta["left_out"]
    assert left["site"] == "F" and left["reason"].startswith(sites.NO_VARIANCE) and "one positive image" in left["reason"]
    assert rows["F"]["note"] == left["reason"] and rows["F"]["logit_auc"] is None
    assert rows["F"]["roc_auc"]["value"] == pytest.approx(0.625)
    assert f"Site F left out of the meta-analysis: {left['reason']}." in sites.markdown(section)
    from gistnet.evidence import report_html

    page = report_html._environment().get_template("sections.html.j2").render(
        models={"resnet34": {"sites": section}}, positive="GIST", negative="LM", r={})
    assert "Site F left out of the meta-analysis: " in page and "0.625 (interval n/a)" in page


def test_hksj_from_ten_sites_on_is_dl_by_default_and_the_key_is_checked():
    rng = np.random.default_rng(3)
    effects, variances = rng.normal(1.0, 0.5, 12), rng.uniform(0.05, 0.3, 12)
    names = [f"s{i}" for i in range(12)]
    nine = sites.meta_analysis(names[:9], effects[:9], variances[:9])
    assert nine["interval"] == "hksj"
    ten = sites.meta_analysis(names[:10], effects[:10], variances[:10])
    mu, se, *_ = _dl_by_hand(effects[:10], variances[:10])
    assert ten["interval"] == "dl" and ten["pooled_auc"]["ci_low"] == pytest.approx(_expit(mu - 1.959963985 * se))
    assert "the default with 10 or more sites" in ten["interval_choice"]
    forced = sites.meta_analysis(names, effects, variances, interval="hksj")
    assert forced["pooled_auc"]["ci_high"] == pytest.approx(_hksj_by_hand(effects, variances)[2])
    from gistnet import config
    from gistnet.errors import ConfigError

    assert config.load_config(None, {}, environ={}).evaluate.meta_analysis_interval == "auto"
    with pytest.raises(ConfigError, match="evaluate.meta_analysis_interval must be auto, hksj or dl, got 'z'"):
        config.load_config(None, {"evaluate.meta_analysis_interval": "z"}, environ={})


def test_hksj_matches_statsmodels_when_tau2_is_positive():
    from statsmodels.stats.meta_analysis import combine_effects

    effects, variances = [0.4, 1.6, 2.5, 0.9], [0.10, 0.20, 0.15, 0.08]
    res = combine_effects(np.array(effects), np.array(variances), method_re="dl", use_t=True)
    low, high = res.conf_int(alpha=0.05, use_t=True)[3]  # random effects, HKSJ scale
    meta = sites.meta_analysis(list("abcd"), effects, variances)
    assert res.tau2 > 0 and meta["intervals"]["hksj"]["scale"] > 1  # (statsmodels' HKSJ has no q* >= 1 floor)
    assert (meta["pooled_auc"]["ci_low"], meta["pooled_auc"]["ci_high"]) == pytest.approx((_expit(low), _expit(high)))


def test_hksj_is_never_narrower_than_the_z_interval():
    """Sites that agree more than their variances expect (Q = 0.03 on 2 df): plain HKSJ's scale
    q* < 1 would give an interval narrower than DerSimonian-Laird's z; it is taken as 1."""
    meta = sites.meta_analysis(list("abc"), [1.0, 1.02, 0.99], [0.2, 0.25, 0.3])
    hksj, dl = meta["intervals"]["hksj"], meta["intervals"]["dl"]
    assert hksj["scale"] < 1 and "taken as 1" in hksj["method"]
    assert hksj["se_logit"] == pytest.approx(meta["pooled_logit_se"])
    assert hksj["ci_low"] < dl["ci_low"] and hksj["ci_high"] > dl["ci_high"]
