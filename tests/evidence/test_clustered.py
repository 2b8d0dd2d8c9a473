"""Patient-clustered intervals and tests (issue 20, item 1), each against an independent
computation: Obuchowski's variance from its definition (pairwise loops) and against a patient
bootstrap, the Rao-Scott design effect by hand, Durkalski's McNemar by hand (its exact sign-flip p
by enumeration) and, with one image per patient, against statsmodels' McNemar; then the property the issue asks for: three identical
images per patient leave every interval within 10% of the original's width."""

import warnings

import numpy as np
import pytest
from scipy.stats import norm
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from gistnet.evidence import clustered
from gistnet.evidence import compare
from gistnet.evidence import evaluate
from gistnet.evidence import stats

METRICS = ("sensitivity", "specificity", "ppv", "npv", "accuracy")


def holdout_29(seed=4):
    """29 hold-out predictions (14 GIST, 15 LM), one image per patient, as in the issue."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(14), np.zeros(15)].astype(int)
    a = labels * 1.6 + rng.normal(size=29)
    b = labels * 0.9 + rng.normal(size=29)
    return labels, a, b, [f"patient-{i:02d}" for i in range(29)]


def triple(values):
    return np.repeat(np.asarray(values), 3)


def width(interval):
    return interval["ci_high"] - interval["ci_low"]


def all_intervals(labels, a, b, clusters, ci_method):
    """Every interval the report carries for two models: the five proportions and the AUC of
    each model, and the AUC difference."""
    out = {}
    for name, s in (("a", a), ("b", b)):
        diag = evaluate.diagnostic_report(labels, 1 / (1 + np.exp(-s)), ci_method, 0.95, scores=s, clusters=clusters)
        out.update({f"{name} {k}": diag["metrics"][k] for k in METRICS})
        out[f"{name} roc_auc"] = diag["roc_auc"]
    correct = tuple((s >= 0) == labels.astype(bool) for s in (a, b))
    comparison = compare.compare(("a", "b"), labels, (a, b), correct, 0.95, seed=3, clusters=clusters)
    out["auc difference"] = comparison["auc_difference"]
    return out, comparison


@pytest.mark.parametrize("ci_method", ["wilson", "clopper-pearson", "agresti-coull", "wald"])
def test_triplicating_every_image_leaves_every_interval_within_ten_percent(ci_method):
    labels, a, b, patients = holdout_29()
    original, _ = all_intervals(labels, a, b, None, ci_method)
    tripled, comparison = all_intervals(triple(labels), triple(a), triple(b), triple(patients), ci_method)
    naive, _ = all_intervals(triple(labels), triple(a), triple(b), None, ci_method)
    checked = 0
    for name, before in original.items():
        after = tripled[name]
        assert after["value"] == pytest.approx(before["value"]), name
        if before["ci_low"] is None:  # a degenerate interval (Wald at 100%) stays n/a
            assert after["ci_low"] is None, name
            continue
        ratio = width(after) / width(before)
        assert 0.9 <= ratio <= 1.1, (name, width(before), width(after))
        assert width(naive[name]) / width(before) < 0.8, name  # counting images as patients narrows it
        checked += 1
    assert checked >= 11
    assert comparison["unit_of_analysis"]["text"] == "per image, clustered by patient: 29 patients, 87 images"
    assert comparison["delong"]["method"] == "obuchowski"
    assert comparison["delong"]["z"] == pytest.approx(compare.delong_test(a, b, labels)["z"])
    assert "resampling patients" in comparison["auc_difference"]["method"]


def test_one_image_per_patient_is_the_per_image_analysis():
    labels, a, b, patients = holdout_29()
    p = 1 / (1 + np.exp(-a))
    with_ids = evaluate.diagnostic_report(labels, p, "wilson", 0.95, scores=a, clusters=patients)
    without = evaluate.diagnostic_report(labels, p, "wilson", 0.95, scores=a)
    assert {k: v for k, v in with_ids.items() if k != "unit_of_analysis"} == \
        {k: v for k, v in without.items() if k != "unit_of_analysis"}
    assert with_ids["unit_of_analysis"]["clustered_by"] is None and with_ids["unit_of_analysis"]["patients"] == 29
    assert without["unit_of_analysis"]["patients"] is None and "independent" in without["unit_of_analysis"]["text"]
    empty_ids = evaluate.diagnostic_report(labels, p, "wilson", 0.95, scores=a, clusters=[""] * 29)
    assert empty_ids["roc_auc"] == without["roc_auc"]  # an image without a patient id is its own patient


def slow_obuchowski(scores, labels, groups):
    """Obuchowski (1997) from its definition, with loops: V10 of each positive image, V01 of
    each negative image over every image of the other class, summed per patient, then
    S10, S01, S11 and var = S10/M + S01/N + (S11 + S11')/(MN)."""
    labels = np.asarray(labels).astype(bool)
    k, n_img = len(scores), len(labels)
    pos = [i for i in range(n_img) if labels[i]]
    neg = [i for i in range(n_img) if not labels[i]]
    big_m, big_n = len(pos), len(neg)
    patients = sorted(set(groups))

    def psi(x, y):
        return 1.0 if x > y else 0.5 if x == y else 0.0

    v10 = [{i: sum(psi(s[i], s[j]) for j in neg) / big_n for i in pos} for s in scores]
    v01 = [{j: sum(psi(s[i], s[j]) for i in pos) / big_m for j in neg} for s in scores]
    auc = [sum(v.values()) / big_m for v in v10]
    m_i = {p: sum(1 for i in pos if groups[i] == p) for p in patients}
    n_i = {p: sum(1 for j in neg if groups[j] == p) for p in patients}
    d10 = [{p: sum(v10[r][i] for i in pos if groups[i] == p) - m_i[p] * auc[r] for p in patients} for r in range(k)]
    d01 = [{p: sum(v01[r][j] for j in neg if groups[j] == p) - n_i[p] * auc[r] for p in patients} for r in range(k)]
    i10 = sum(1 for p in patients if m_i[p] > 0)
    i01 = sum(1 for p in patients if n_i[p] > 0)
    n_pat = len(patients)
    cov = np.zeros((k, k))
    for r in range(k):
        for s in range(k):
            s10 = i10 / ((i10 - 1) * big_m) * sum(d10[r][p] * d10[s][p] for p in patients)
            s01 = i01 / ((i01 - 1) * big_n) * sum(d01[r][p] * d01[s][p] for p in patients)
            s11 = n_pat / (n_pat - 1) * sum(d10[r][p] * d01[s][p] for p in patients)
            s11t = n_pat / (n_pat - 1) * sum(d10[s][p] * d01[r][p] for p in patients)
            cov[r, s] = s10 / big_m + s01 / big_n + (s11 + s11t) / (big_m * big_n)
    return np.array(auc), cov


def test_obuchowski_matches_its_definition_and_is_delong_with_one_image_per_patient():
    rng = np.random.default_rng(5)
    sizes = rng.integers(1, 5, size=17)
    groups = np.repeat([f"p{i}" for i in range(17)], sizes)
    labels = (rng.random(len(groups)) < 0.45).astype(int)  # some patients have images of both classes
    a = labels + rng.normal(size=len(groups))
    b = np.round(labels * 0.5 + rng.normal(size=len(groups)), 1)  # ties
    fast_auc, fast_cov = clustered.obuchowski(np.vstack([a, b]), labels, groups)
    slow_auc, slow_cov = slow_obuchowski([a, b], labels, list(groups))
    np.testing.assert_allclose(fast_auc, slow_auc, atol=1e-12)
    np.testing.assert_allclose(fast_cov, slow_cov, atol=1e-12)
    singletons = np.arange(len(labels))
    np.testing.assert_allclose(clustered.obuchowski(np.vstack([a, b]), labels, singletons)[1],
                               compare.delong(np.vstack([a, b]), labels)[1], atol=1e-12)


def test_obuchowski_variance_agrees_with_a_patient_bootstrap_where_delong_does_not():
    """Patients with 3 correlated images: the clustered variance matches the variance of the AUC
    over patients resampled (an independent, brute-force estimate); DeLong's is far too small."""
    rng = np.random.default_rng(11)
    n_pat = 80
    patient_label = np.r_[np.ones(40), np.zeros(40)].astype(int)
    patient_effect = rng.normal(size=n_pat) * 1.2
    groups = np.repeat(np.arange(n_pat), 3)
    labels = patient_label[groups]
    scores = labels * 1.0 + patient_effect[groups] + rng.normal(size=len(groups)) * 0.4
    _, cov = clustered.obuchowski(scores[None, :], labels, groups)
    _, naive = compare.delong(scores[None, :], labels)
    draws = []
    boot = np.random.default_rng(2)
    for _ in range(3000):
        chosen = np.r_[boot.choice(40, 40), 40 + boot.choice(40, 40)]
        rows = np.concatenate([np.flatnonzero(groups == c) for c in chosen])
        y, s = labels[rows], scores[rows]
        draws.append(compare._mann_whitney_auc(s[y == 1], s[y == 0]))
    bootstrap_variance = np.var(draws, ddof=1)
    assert cov[0, 0] == pytest.approx(bootstrap_variance, rel=0.2)
    assert naive[0, 0] < 0.6 * bootstrap_variance


def test_rao_scott_design_effect_and_interval_by_hand():
    rng = np.random.default_rng(8)
    sizes = rng.integers(1, 6, size=25)
    groups = np.repeat(np.arange(25), sizes)
    p_patient = rng.beta(0.5, 0.5, size=25)
    y = rng.random(len(groups)) < p_patient[groups]
    # Rao & Scott (1992): v = k/(k-1) sum_i (y_i - p m_i)^2 / M^2, d = v / (p(1-p)/M)
    k, big_m, p = 25, len(y), y.mean()
    y_i = np.array([y[groups == i].sum() for i in range(k)])
    v = k / (k - 1) * np.sum((y_i - p * sizes) ** 2) / big_m ** 2
    d = v / (p * (1 - p) / big_m)
    assert clustered.design_effect(y, groups) == pytest.approx(d, rel=1e-9)
    assert d > 1.2  # the patients differ: a real design effect
    got = clustered.proportion(y, groups, "wilson", 0.95)
    low, high = proportion_confint(p * big_m / d, big_m / d, alpha=0.05, method="wilson")
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((low, high), rel=1e-9)
    assert got["effective_n"] == pytest.approx(big_m / d) and got["patients"] == 25
    everyone = clustered.proportion(np.ones(12, bool), np.repeat(np.arange(4), 3), "wilson", 0.95)
    assert everyone["effective_n"] == 4  # all right: no variance to estimate, each patient counts once
    assert everyone["ci_low"] == pytest.approx(proportion_confint(4, 4, method="wilson")[0])


def test_durkalski_mcnemar_by_hand_and_mcnemar_with_one_image_per_patient():
    a = np.array([1, 1, 0, 1, 1, 0, 1, 1, 1, 0, 0, 1], bool)
    b = np.array([0, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0], bool)
    groups = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    # per patient: b_k (only a right) - c_k (only b right): 1-1, 2-1, 1-0, 1-1
    diffs = np.array([0, 1, 1, 0])
    statistic = diffs.sum() ** 2 / np.sum(diffs ** 2)
    got = clustered.mcnemar(a, b, groups)
    assert got["statistic"] == pytest.approx(statistic) and got["only_first_correct"] == 5
    assert got["p"] == pytest.approx(sign_flips_by_enumeration(diffs)) == pytest.approx(0.5)  # 2 of 4 flips reach 2
    rng = np.random.default_rng(1)
    x, z = rng.random(40) < 0.7, rng.random(40) < 0.5
    table = [[int((x & z).sum()), int((x & ~z).sum())], [int((~x & z).sum()), int((~x & ~z).sum())]]
    reference = mcnemar(table, exact=False, correction=False)
    exact = mcnemar(table, exact=True)
    single = clustered.mcnemar(x, z, np.arange(40))
    assert single["statistic"] == pytest.approx(reference.statistic) and single["p"] == pytest.approx(exact.pvalue)
    tripled = compare.mcnemar_test(triple(x), triple(z), triple(np.arange(40)))
    assert tripled["statistic"] == pytest.approx(reference.statistic)  # copies add no evidence


def sign_flips_by_enumeration(diffs):
    """Two-sided sign-flip p over all 2^k sign vectors, by brute force (itertools)."""
    import itertools

    diffs = np.asarray(diffs, float)
    observed = abs(diffs.sum())
    sums = [abs(np.dot(signs, diffs)) for signs in itertools.product((-1, 1), repeat=len(diffs))]
    return float(np.mean([v >= observed - 1e-9 for v in sums]))


def test_clustered_mcnemar_is_never_more_liberal_than_the_exact_test():
    """4 vs 0 discordant of 20 images (one per patient): exact p 0.125. One extra image of one
    patient, both models right, makes the data clustered: the p stays 0.125 (a chi-square gave 0.046)."""
    a = np.array([True] * 20)
    b = np.array([False] * 4 + [True] * 16)
    assert compare.mcnemar_test(a, b, [f"p{i}" for i in range(20)])["p"] == pytest.approx(0.125)
    clustered_p = compare.mcnemar_test(np.r_[a, True], np.r_[b, True], [f"p{i}" for i in range(20)] + ["p7"])
    assert clustered_p["method"] == clustered.MCNEMAR_METHOD and clustered_p["p"] == pytest.approx(0.125)


@pytest.mark.parametrize("seed", range(40))
def test_clustered_mcnemar_p_property(seed):
    """Random one-image-per-patient data plus extra images both models call alike, of random
    patients: the clustered p equals (so is never below) McNemar's exact p on the one-image data;
    on random clustered data the p is the brute-force sign-flip enumeration's."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 30))
    x, z = rng.random(n) < rng.uniform(0.3, 0.9), rng.random(n) < rng.uniform(0.3, 0.9)
    table = [[int((x & z).sum()), int((x & ~z).sum())], [int((~x & z).sum()), int((~x & ~z).sum())]]
    exact = mcnemar(table, exact=True).pvalue
    extra = int(rng.integers(1, 6))
    who, same = rng.integers(0, n, extra), rng.random(extra) < 0.5
    got = compare.mcnemar_test(np.r_[x, same], np.r_[z, same], np.r_[np.arange(n), who])
    assert got["p"] >= exact - 1e-12 and got["p"] == pytest.approx(exact)
    groups = rng.integers(0, int(rng.integers(3, 11)), 30)
    a, b = rng.random(30) < 0.6, rng.random(30) < 0.5
    diffs = np.bincount(groups, weights=(a & ~b).astype(float)) - np.bincount(groups, weights=(~a & b).astype(float))
    if np.any(diffs):
        assert clustered.mcnemar(a, b, groups)["p"] == pytest.approx(sign_flips_by_enumeration(diffs), abs=1e-12)


def test_patient_bootstrap_with_patients_of_both_classes_is_unstratified_and_reproducible():
    rng = np.random.default_rng(6)
    groups = np.repeat(np.arange(20), 3)
    labels = (rng.random(60) < 0.5).astype(int)
    a, b = labels * 1.5 + rng.normal(size=60), labels * 0.5 + rng.normal(size=60)
    first = compare.bootstrap_auc_difference(a, b, labels, 0.95, seed=1, n_resamples=400, clusters=groups)
    assert first == compare.bootstrap_auc_difference(a, b, labels, 0.95, seed=1, n_resamples=400, clusters=groups)
    assert first["method"].startswith("paired bootstrap resampling patients")
    assert first["ci_low"] < first["value"] < first["ci_high"]


def test_clustered_statistics_leak_no_warning():
    labels, a, b, patients = holdout_29()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        all_intervals(triple(labels), triple(a), triple(b), triple(patients), "wilson")
        one_positive = np.r_[1, np.zeros(8)].astype(int)
        evaluate.diagnostic_report(triple(one_positive), np.full(27, 0.6), "wald", 0.95,
                                   scores=triple(np.arange(9.0)), clusters=triple(np.arange(9)))


def test_the_interval_uses_the_normal_quantile_of_the_level():
    labels, a, _, patients = holdout_29()
    ci = compare.auc_interval(triple(a), triple(labels), 0.9, clusters=triple(patients))
    _, cov = clustered.obuchowski(triple(a)[None, :], triple(labels), triple(patients))
    half = norm.ppf(0.95) * np.sqrt(cov[0, 0])
    assert ci["ci_high"] - ci["ci_low"] == pytest.approx(min(2 * half, 1 - ci["value"] + half), rel=1e-9)


def test_diagnostic_metrics_without_clusters_equal_the_count_table():
    labels, a, _, _ = holdout_29()
    called = a >= 0.5
    tp, fp = int((labels.astype(bool) & called).sum()), int((~labels.astype(bool) & called).sum())
    tn, fn = int((~labels.astype(bool) & ~called).sum()), int((labels.astype(bool) & ~called).sum())
    assert stats.diagnostic_metrics(labels, called, "wilson", 0.95) == stats.diagnostic_table(tp, fp, tn, fn)


def test_a_proportion_of_one_patient_has_no_interval_with_the_reason():
    """Every image of the proportion from one patient: n/a with the reason, not a Wilson interval
    on an effective n of 1; two patients still get one."""
    one = clustered.proportion(np.array([True, True, False]), np.array([4, 4, 4]), "wilson", 0.95)
    assert one["value"] == pytest.approx(2 / 3) and one["ci_low"] is None and one["ci_high"] is None
    assert one["patients"] == 1 and "effective_n" not in one and "one patient" in one["note"]
    assert stats.value_with_interval(one, percent=True) == f"66.7% (interval n/a ({one['note']}))"
    # through the metrics: the positives are all of patient "a" (sensitivity), the negatives of three
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    called = np.array([1, 1, 0, 0, 0, 1, 0])
    metrics = stats.diagnostic_metrics(labels, called, "wilson", 0.95, ["a", "a", "a", "b", "c", "d", "d"])
    assert metrics["sensitivity"]["ci_low"] is None and "one patient" in metrics["sensitivity"]["note"]
    assert metrics["specificity"]["ci_low"] is not None and metrics["specificity"]["patients"] == 3
    two = clustered.proportion(np.array([True, True, False, True]), np.array([1, 1, 2, 2]), "wilson", 0.95)
    assert two["ci_low"] is not None and two["patients"] == 2
