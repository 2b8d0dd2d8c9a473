"""A k-fold run's model card (issue 21): its model is the ensemble of the K fold models (mean logit
margin), with the median of the folds' Youden thresholds as the exploratory threshold, and its
performance figures are the pooled out-of-fold ones."""

import json
import statistics

from gistnet.data import runs
from gistnet.evidence import aggregate as aggregation
from gistnet.evidence import model_card
from gistnet.evidence.report import percent_with_ci
from tests.evidence.test_aggregate import fake_unit, seeded_kfold_run

YOUDEN = {0: 0.2, 1: 0.7, 2: 0.35}


def test_a_kfold_card_describes_the_fold_ensemble_and_pooled_out_of_fold_figures(tmp_path):
    images, cfg, out, plan = seeded_kfold_run(tmp_path / "run", models="resnet34")
    for i, unit in enumerate(runs.all_units(cfg)):
        fake_unit(out, unit, images, plan.part(unit.fold), cfg, seed=i)
        result = json.loads(out.read(unit.key("result.json")))
        result["youden_threshold"] = YOUDEN[unit.fold]
        result["checkpoint"]["sha256"] = f"{unit.fold:064d}"
        out.write_bytes(unit.key("result.json"), json.dumps(result).encode())
    final = aggregation.aggregate(out, cfg, "r", str(tmp_path))
    card = (tmp_path / "run" / "resnet34" / model_card.CARD).read_text()
    assert card == model_card.render(final, "resnet34")
    m = final["models"]["resnet34"]
    assert "used as an ensemble of its 3 fold models (mean logit margin)" in card
    median = statistics.median(YOUDEN.values())
    assert median == 0.35 and f"the median of the folds' Youden thresholds, {median:.3f}" in card
    assert "Its performance figures are pooled out-of-fold" in card
    for fold in range(3):
        assert f"- Weights of fold {fold}: `" in card and f"sha256 `{fold:064d}`" in card
    cm = m["confusion_matrix"]
    assert sum(cm.values()) == len(images.keys)  # every image once: the pooled out-of-fold predictions
    assert (f"Pooled out-of-fold over the run's 3 folds ({len(images.keys)} images, each scored by the fold model "
            f"that did not train on it), threshold 0.5: TP {cm['tp']}, FN {cm['fn']}, TN {cm['tn']}, FP {cm['fp']}.") in card
    assert f"| sensitivity | {percent_with_ci(m['metrics']['sensitivity'])} |" in card
    assert "On the run's validation set" not in card and "Validation images:" not in card
