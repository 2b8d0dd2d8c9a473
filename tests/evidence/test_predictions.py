"""predictions.csv: one row per validation image and model."""

import numpy as np
import pytest
import torch

from gistnet.evidence import predictions
from gistnet.data.storage import LocalStore


def test_round_trip_is_sorted_and_byte_stable(tmp_path):
    a = predictions.rows(["LM/b.png", "GIST/a.png"], ["p2", "p1"], [0, 1], ("GIST", "LM"), 1, "resnet50",
                         [0.25, 0.75], [-1.0986, 1.0986])
    b = predictions.rows(["GIST/a.png"], [], [1], ("GIST", "LM"), None, "resnet34", [0.5], [0.0])
    store = LocalStore(tmp_path)
    predictions.write(store, a + b)
    first = (tmp_path / "predictions.csv").read_bytes()
    assert first.decode().splitlines()[0] == "key,patient_id,label,fold,model,probability,score"
    back = predictions.read(store)
    assert [(p.model, p.fold, p.key) for p in back] == [("resnet34", None, "GIST/a.png"),
                                                          ("resnet50", 1, "GIST/a.png"), ("resnet50", 1, "LM/b.png")]
    assert back[1].label == "GIST" and back[2].label == "LM" and back[2].patient_id == "p2"
    assert back[0].patient_id == "" and back[1].probability == 0.75
    assert predictions.to_csv(list(reversed(back))) == first


def test_wrong_columns_are_refused():
    with pytest.raises(ValueError, match="expected columns"):
        predictions.from_csv(b"path,label\nx,GIST\n")


def test_score_is_the_logit_margin():
    logits = torch.tensor([[0.3, 2.5], [1.0, -4.0], [0.0, 0.0], [-3.0, 9.0]])
    p = logits.softmax(1)[:, 1].numpy()
    margin = (logits[:, 1] - logits[:, 0]).double().numpy()
    # float32 probabilities lose resolution near 1: exact to 1e-5 below |margin| 5, to 1% at 12
    np.testing.assert_allclose(predictions.scores_from_probabilities(p), margin, atol=1e-5, rtol=1e-3)
    # saturated probabilities stay finite and keep their order
    s = predictions.scores_from_probabilities([0.0, 1.0, 0.999])
    assert np.isfinite(s).all() and s[0] < 0 < s[2] < s[1]
