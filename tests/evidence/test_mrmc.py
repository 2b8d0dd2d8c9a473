"""Obuchowski-Rockette / Hillis against a published worked example and independent computations.

The reference is the output of the Iowa OR-DBM MRMC 2.51 software (Schartz, Hillis, Pesce,
Berbaum; build 20181028) for the Van Dyke data set, trapezoidal AUC, jackknife covariances
("VanDyke trap area jackknife anova.txt", kept by RJafroc as
tests/testthat/goodValues361/Iowa/VanDyke.txt). Every figure below is that file's, at the
precision it prints.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from gistnet.evidence import mrmc

DATA = Path(__file__).parent / "data" / "vandyke.txt"


def van_dyke() -> mrmc.Ratings:
    scores = np.zeros((2, 5, 114))
    reader = -1
    for line in DATA.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        if fields[0] == "R":
            reader = int(fields[1])
            continue
        first, second, case = map(int, fields)
        scores[:, reader, case] = first, second
    truth = np.r_[np.zeros(69, int), np.ones(45, int)]
    return mrmc.Ratings(("1", "2"), tuple("12345"), tuple(map(str, range(114))), truth, scores)


@pytest.fixture(scope="module")
def result() -> mrmc.ORResult:
    return mrmc.or_analysis(van_dyke())


def test_reader_aucs_match_the_published_table(result):
    published = [
        [0.91964573, 0.85877617, 0.90386473, 0.97310789, 0.82979066],
        [0.94782609, 0.90531401, 0.92173913, 0.99935588, 0.92995169],
    ]
    np.testing.assert_allclose(result.foms, published, atol=5e-9)
    assert result.foms.mean(axis=1) == pytest.approx([0.89703704, 0.94083736], abs=5e-9)


def test_mean_squares_and_covariances_match(result):
    assert result.ms_t == pytest.approx(0.00479617, abs=5e-9)
    assert result.ms_r == pytest.approx(0.00383620, abs=5e-9)
    assert result.ms_tr == pytest.approx(0.00055103, abs=5e-9)
    comp = result.components
    assert comp.var == pytest.approx(0.00080229, abs=5e-9)
    assert comp.cov1 == pytest.approx(0.00034661, abs=5e-9)
    assert comp.cov2 == pytest.approx(0.00034407, abs=5e-9)
    assert comp.cov3 == pytest.approx(0.00023903, abs=5e-9)


def test_random_readers_random_cases(result):
    rrrc = result.rrrc
    assert rrrc.statistic == pytest.approx(4.46, abs=0.005)
    assert (rrrc.ndf, round(rrrc.ddf, 2), round(rrrc.p, 4)) == (1, 15.26, 0.0517)
    (diff,) = rrrc.differences
    assert (round(diff.difference, 5), round(diff.se, 5)) == (-0.04380, 0.02075)
    assert (round(diff.ci_low, 5), round(diff.ci_high, 5)) == (-0.08796, 0.00036)
    single = {m.modality: m for m in rrrc.modalities}
    assert (round(single["1"].se, 8), round(single["1"].df, 2)) == (0.03317360, 12.74)
    assert (round(single["1"].ci_low, 8), round(single["1"].ci_high, 8)) == (0.82522360, 0.96885048)
    assert (round(single["2"].se, 8), round(single["2"].df, 2)) == (0.02156637, 12.71)
    assert (round(single["2"].ci_low, 8), round(single["2"].ci_high, 8)) == (0.89413783, 0.98753689)


def test_fixed_readers_random_cases(result):
    frrc = result.frrc
    assert (round(frrc.statistic, 5), frrc.ndf, round(frrc.p, 4)) == (5.47595, 1, 0.0193)
    (diff,) = frrc.differences
    assert (round(diff.se, 5), round(diff.ci_low, 5), round(diff.ci_high, 5)) == (0.01872, -0.08049, -0.00711)
    single = {m.modality: m for m in frrc.modalities}
    assert (round(single["1"].se, 8), round(single["1"].ci_low, 8), round(single["1"].ci_high, 8)) == (
        0.02428971, 0.84943008, 0.94464399)
    assert (round(single["2"].se, 8), round(single["2"].ci_low, 8), round(single["2"].ci_high, 8)) == (
        0.01677632, 0.90795637, 0.97371835)


def test_random_readers_fixed_cases(result):
    rrfc = result.rrfc
    assert (round(rrfc.statistic, 2), rrfc.ndf, rrfc.ddf, round(rrfc.p, 4)) == (8.70, 1, 4, 0.0420)
    (diff,) = rrfc.differences
    assert (round(diff.se, 5), round(diff.ci_low, 5), round(diff.ci_high, 5)) == (0.01485, -0.08502, -0.00258)
    # With two modalities and fixed cases, RRFC is the paired t-test on the reader AUCs.
    paired = stats.ttest_rel(result.foms[0], result.foms[1])
    assert rrfc.p == pytest.approx(paired.pvalue, rel=1e-9)


def test_auc_and_jackknife_match_independent_computations():
    ratings = van_dyke()
    for i, j in [(0, 0), (1, 4)]:
        row = ratings.scores[i, j]
        assert mrmc.empirical_auc(ratings.truth, row) == pytest.approx(roc_auc_score(ratings.truth, row))
        left_out = mrmc.jackknife_aucs(ratings.truth, row)
        for k in (0, 68, 69, 113):
            keep = np.arange(114) != k
            assert left_out[k] == pytest.approx(roc_auc_score(ratings.truth[keep], row[keep]))


def test_delong_covariance_option_differs_and_stays_close():
    ratings = van_dyke()
    jack = mrmc.or_analysis(ratings, covariance="jackknife")
    dl = mrmc.or_analysis(ratings, covariance="delong")
    assert dl.covariance == "delong"
    # Same AUCs and mean squares; DeLong's covariance is (K-1)/K-ish of the jackknife's, not equal.
    np.testing.assert_allclose(dl.foms, jack.foms)
    assert dl.components.var != pytest.approx(jack.components.var, rel=1e-6)
    assert dl.components.var == pytest.approx(jack.components.var, rel=0.05)
    with pytest.raises(ValueError, match="covariance method"):
        mrmc.or_analysis(ratings, covariance="bootstrap")


def test_one_reader_gives_the_fixed_reader_analysis_only():
    full = van_dyke()
    one = mrmc.Ratings(full.modalities, ("1",), full.cases, full.truth, full.scores[:, :1])
    result = mrmc.or_analysis(one)
    assert result.rrrc.statistic is None and "one reader" in result.rrrc.note
    assert result.rrfc.statistic is None
    # Fixed reader, random cases with one reader is the paired comparison of two correlated AUCs.
    (diff,) = result.frrc.differences
    expected_se = math.sqrt(2 * (result.components.var - result.components.cov1))
    assert diff.se == pytest.approx(expected_se)


def test_one_modality_has_intervals_but_no_test():
    full = van_dyke()
    one = mrmc.Ratings(("1",), full.readers, full.cases, full.truth, full.scores[:1])
    result = mrmc.or_analysis(one)
    assert result.rrrc.statistic is None and "one modality" in result.rrrc.note
    (single,) = result.rrrc.modalities
    # The single-modality interval uses that modality's data alone: the same as in the full study.
    assert (round(single.ci_low, 8), round(single.ci_high, 8)) == (0.82522360, 0.96885048)


def test_model_versus_readers_treats_the_model_as_a_reader_free_modality():
    full = van_dyke()
    model = full.scores[1].mean(axis=0)  # a "model" that averages the aided ratings
    analysis = mrmc.model_versus_readers(full.truth, model, full.scores[0], full.readers)
    (diff,) = analysis.differences
    readers_mean = np.mean([roc_auc_score(full.truth, r) for r in full.scores[0]])
    assert diff.difference == pytest.approx(roc_auc_score(full.truth, model) - readers_mean)
    assert diff.ci_low < diff.difference < diff.ci_high
    assert analysis.ddf > 0 and 0 <= analysis.p <= 1


def test_bad_tables_are_refused():
    full = van_dyke()
    with pytest.raises(ValueError, match="shape"):
        mrmc.Ratings(full.modalities, full.readers, full.cases, full.truth, full.scores[:, :, :10])
    with pytest.raises(ValueError, match="positive and negative"):
        mrmc.Ratings(full.modalities, full.readers, full.cases, np.zeros(114, int), full.scores)
    bad = full.scores.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        mrmc.Ratings(full.modalities, full.readers, full.cases, full.truth, bad)
