"""Hold-out and k-fold splits: stratified, grouped by patient, every image validated once."""

import json
import re

import pytest

from gistnet.data import split
from gistnet.config import SplitConfig
from gistnet.errors import ConfigError, DataError

NAMES = ("GIST", "LM")


def paper_keys():
    labels = [1] * 69 + [0] * 73
    return [f"k{i:03d}" for i in range(142)], labels


def test_paper_holdout_counts_and_round_trip():
    keys, labels = paper_keys()
    plan = split.make_plan(keys, labels, [], SplitConfig(), seed=0)
    part = plan.part(None)
    label = dict(zip(keys, labels))
    assert (sum(label[k] for k in part.train), sum(1 - label[k] for k in part.train)) == (55, 58)
    assert (sum(label[k] for k in part.val), sum(1 - label[k] for k in part.val)) == (14, 15)
    assert plan == split.make_plan(keys, labels, [], SplitConfig(), seed=0)
    assert split.Plan.from_dict(plan.to_dict()) == plan and len(plan.parts) == 1


def test_kfold_validates_every_image_exactly_once_stratified():
    keys, labels = paper_keys()
    plan = split.make_plan(keys, labels, [], SplitConfig(method="kfold", folds=5), seed=3)
    assert [p.fold for p in plan.parts] == [0, 1, 2, 3, 4]
    validated = [k for p in plan.parts for k in p.val]
    assert sorted(validated) == sorted(keys)
    label = dict(zip(keys, labels))
    for p in plan.parts:
        assert not set(p.train) & set(p.val) and len(p.train) + len(p.val) == 142
        assert sum(label[k] for k in p.val) in (13, 14)  # 69 GIST over 5 folds
    assert split.Plan.from_dict(plan.to_dict()) == plan


def test_kfold_groups_patients():
    keys = [f"img/{i}.png" for i in range(40)]
    labels = [i % 2 for i in range(40)]
    patients = [f"p{i // 4}{i % 2}" for i in range(40)]  # 2 images per patient, one class each
    plan = split.make_plan(keys, labels, patients, SplitConfig(method="kfold", folds=3), seed=0)
    patient = dict(zip(keys, patients))
    assert "patient" in plan.parts[0].method
    for p in plan.parts:
        assert not {patient[k] for k in p.train} & {patient[k] for k in p.val}
    holdout = split.make_plan(keys, labels, patients, SplitConfig(), seed=0).part(None)
    assert not {patient[k] for k in holdout.train} & {patient[k] for k in holdout.val}


def test_more_folds_than_images_of_a_class_is_a_data_error():
    keys, labels = [f"k{i}" for i in range(9)], [1, 1, 1, 0, 0, 0, 0, 0, 0]
    with pytest.raises(DataError, match=r"split.folds=4 but class 'GIST' has only 3 images"):
        split.make_plan(keys, labels, [], SplitConfig(method="kfold", folds=4), 0, NAMES)


@pytest.mark.parametrize("fold, method, message", [
    ("5", "kfold", r"--fold 5 is out of range: split.folds=5 gives folds 0..4"),
    ("-1", "kfold", r"--fold -1 is out of range"),
    ("x", "kfold", r"--fold must be an integer"),
    ("0", "holdout", r"--fold 0 needs a k-fold split"),
])
def test_bad_fold_selection_is_a_config_error(fold, method, message):
    with pytest.raises(ConfigError, match=message):
        split.select_folds(fold, SplitConfig(method=method))


def test_fold_selection():
    assert split.select_folds(None, SplitConfig()) == [None]
    assert split.select_folds(None, SplitConfig(method="kfold", folds=3)) == [0, 1, 2]
    assert split.select_folds("2", SplitConfig(method="kfold", folds=3)) == [2]


def _labels(n_pos, n_neg):
    return [f"k{i}" for i in range(n_pos + n_neg)], [1] * n_pos + [0] * n_neg


@pytest.mark.parametrize("data, patients, val_fraction, message", [
    (_labels(5, 5), [], 0.9, "split.val_fraction=0.9 of 10 images leaves 1 for training and 9 for validation"),
    (_labels(5, 5), [], 0.05, "split.val_fraction=0.05 of 10 images leaves 9 for training and 1 for validation"),
    (_labels(3, 30), [], 0.05, "the validation set of the split (stratified-holdout, split.val_fraction=0.05) "
                               "has 0 positive and 2 negative images"),
    (_labels(6, 6), [f"p{i % 3}" for i in range(12)], 0.2,
     "3 patients cannot fill the 5 folds of the patient-grouped split"),
    (_labels(1, 9), [], 0.5, "a class has 1 image(s) (positive 1, negative 9)"),
], ids=["val_fraction 0.9", "val_fraction 0.05", "class empty in validation", "fewer patients than folds",
        "one image in a class"])
def test_impossible_splits_are_data_errors_naming_the_counts(data, patients, val_fraction, message):
    with pytest.raises(DataError, match=re.escape(message)):
        split.make_holdout(*data, patients, val_fraction, seed=0)


def test_feasible_split_has_both_classes_on_both_sides():
    keys, labels = _labels(5, 5)
    part = split.make_holdout(keys, labels, [], 0.2, seed=0)
    label = dict(zip(keys, labels))
    for side in (part.train, part.val):
        assert 0 < sum(label[k] for k in side) < len(side)


def test_leave_one_site_out_holds_out_each_site_once():
    keys = [f"k{i}" for i in range(12)]
    labels = [i % 2 for i in range(12)]
    sites = ["C", "A", "B", "A", "B", "C", "A", "B", "C", "A", "B", "C"]
    plan = split.make_plan(keys, labels, [""] * 12, SplitConfig(method="site"), 0, ("GIST", "LM"), sites)
    assert plan.method == "site" and [p.site for p in plan.parts] == ["A", "B", "C"]
    for part in plan.parts:
        assert set(part.val) == {k for k, s in zip(keys, sites) if s == part.site}
        assert set(part.train) == set(keys) - set(part.val)
    again = split.Plan.from_dict(plan.to_dict())
    assert again.method == "site" and [p.site for p in again.parts] == ["A", "B", "C"] and again.parts == plan.parts


def test_fewer_than_three_sites_is_a_data_error_naming_the_counts():
    keys = [f"k{i}" for i in range(6)]
    with pytest.raises(DataError) as caught:
        split.make_plan(keys, [0, 1] * 3, [""] * 6, SplitConfig(method="site"), 0, ("GIST", "LM"),
                        ["A", "A", "A", "A", "B", "B"])
    assert "split.method=site needs at least 3 sites, the data has 2 (A: 4 images, B: 2 images)" in str(caught.value)
    with pytest.raises(DataError, match="2 of 6 images have none"):
        split.make_plan(keys, [0, 1] * 3, [""] * 6, SplitConfig(method="site"), 0, ("GIST", "LM"),
                        ["A", "B", "C", "A", "", ""])


@pytest.mark.parametrize("method", ["holdout", "kfold"])
def test_patient_grouped_split_does_not_depend_on_the_pseudonym_key(method):
    """The same data and seed under two pseudonym keys (two random per-run keys, no
    GISTNET_PSEUDONYM_KEY) give the same partition: groups are not ordered by their pseudonyms."""
    from gistnet.data.privacy import Pseudonymizer

    keys = [f"img/{i:03d}.png" for i in range(60)]
    labels = [int(i % 3 == 0) for i in range(60)]
    raw = [f"mrn{i // 2}" for i in range(60)]  # 30 patients, 2 images each
    cfg = SplitConfig(method=method, folds=3)
    dicts = []
    for secret in (b"a" * 32, b"b" * 32, b"c" * 32):
        pseudo = Pseudonymizer(secret, False)
        plan = split.make_plan(keys, labels, [pseudo.patient(p) for p in raw], cfg, seed=0)
        dicts.append(json.dumps(plan.to_dict(), sort_keys=True))
    assert dicts[0] == dicts[1] == dicts[2]
    patient = dict(zip(keys, raw))
    for part in split.Plan.from_dict(json.loads(dicts[0])).parts:
        assert not {patient[k] for k in part.train} & {patient[k] for k in part.val}


@pytest.mark.e2e
def test_a_run_with_patient_ids_is_the_same_under_two_pseudonym_keys(tiny_data, tmp_path, monkeypatch):
    """Two runs of the same data and seed, each with its own pseudonym key: byte-identical
    split.json and weights (32 px, 1 epoch, one model)."""
    import shutil

    from gistnet import config, pipeline
    from tests.conftest import TINY_RUN

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    images = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    rows = [f"{key},{key.partition('/')[0]},mrn-{key.partition('/')[0]}-{i // 2}" for i, key in enumerate(images)]
    (data / "manifest.csv").write_text("path,label,patient_id\n" + "\n".join(rows) + "\n")
    out = tmp_path / "runs"
    for run_id, secret in (("x", "first-key-0123456789"), ("y", "second-key-0123456789")):
        monkeypatch.setenv("GISTNET_PSEUDONYM_KEY", secret)
        pipeline.run(config.load_config(None, {"data.uri": str(data), "output.uri": str(out), "output.run_id": run_id,
                                               "train.seed": 0, **TINY_RUN}, environ={}))
    assert "by patient_id" in json.loads((out / "x" / "split.json").read_text())["method"]
    assert (out / "x" / "split.json").read_bytes() == (out / "y" / "split.json").read_bytes()
    weights = "resnet34/model.safetensors"
    assert (out / "x" / weights).read_bytes() == (out / "y" / weights).read_bytes()


def test_the_plan_is_logged_at_debug(caplog):
    keys = [f"GIST/{i}.png" for i in range(10)] + [f"LM/{i}.png" for i in range(10)]
    with caplog.at_level("DEBUG", logger="gistnet.data.split"):
        split.make_plan(keys, [1] * 10 + [0] * 10, [""] * 20, SplitConfig(method="kfold", folds=5), seed=0)
    lines = [r.getMessage() for r in caplog.records if r.levelname == "DEBUG"]
    assert lines == [f"split kfold, part {i} of 5: 16 training, 4 validation images (stratified-kfold, seed 0)"
                     for i in range(1, 6)], lines
