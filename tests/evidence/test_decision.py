"""Net benefit: against the dcurves package and against the formula by hand."""

import numpy as np
import pandas as pd
import pytest

from gistnet.evidence import decision

dcurves = pytest.importorskip("dcurves")


def _data(seed=0, n=80):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.35 * y + rng.random(n) * 0.65, 0, 1)
    return y, p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_net_benefit_matches_dcurves(seed):
    y, p = _data(seed)
    pts = decision.thresholds()
    reference = dcurves.dca(data=pd.DataFrame({"y": y, "p": p}), outcome="y", modelnames=["p"], thresholds=pts)
    ours = decision.decision_curves(y, {"p": p})
    for model, values in (("p", ours["net_benefit"]["p"]), ("all", ours["treat_all"]), ("none", ours["treat_none"])):
        ref = reference[reference.model == model].sort_values("threshold")
        np.testing.assert_allclose(ref.threshold.to_numpy(), pts)
        np.testing.assert_allclose(values, ref.net_benefit.to_numpy(), atol=1e-6)


def test_net_benefit_by_hand():
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([0.9, 0.4, 0.6, 0.1, 0.2])
    # pt = 0.5: treated 0.9 (TP), 0.6 (FP): 1/5 - 1/5 * 1 = 0; pt = 0.25: treated 0.9, 0.4, 0.6: 2/5 - 1/5 * 1/3
    np.testing.assert_allclose(decision.net_benefit(y, p, [0.5, 0.25]), [0.0, 0.4 - 0.2 / 3])
    np.testing.assert_allclose(decision.treat_all(y, [0.5]), [0.6 - 0.4])


def test_thresholds_span_and_ranges():
    pts = decision.thresholds()
    assert pts[0] == 0.05 and pts[-1] == 0.95 and len(pts) == 91
    assert decision._ranges([0.05, 0.06, 0.07, 0.3]) == [[0.05, 0.07], [0.3, 0.3]]


def test_figure_is_drawn(tmp_path):
    y, p = _data()
    path = tmp_path / "dca.png"
    decision.figure(decision.decision_curves(y, {"m": p}), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
