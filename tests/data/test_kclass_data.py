"""K classes and lesions in the data layer: class folders and manifest labels from data.classes
(label index = classes.head_order), lesion ids from the manifest, and the bad inputs (issue 27)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from gistnet.config import DataConfig, SplitConfig
from gistnet.data import dataset, listing, split
from gistnet.data.storage import LocalStore
from gistnet.errors import DataError
from tests.conftest import write_k_class_data

K3 = DataConfig(classes=("GIST", "LM", "NET"), negative_class="")


def test_k_class_folders_are_labelled_in_head_order(tmp_path):
    write_k_class_data(tmp_path, lesions_per_class=2, manifest=False)
    labeled, _ = listing.list_labeled(LocalStore(tmp_path), K3)
    by_folder = {lab.key.split("/")[0]: lab.label for lab in labeled}
    assert K3.head_classes == ("LM", "NET", "GIST")
    assert by_folder == {"LM": 0, "NET": 1, "GIST": 2}


def test_two_class_folders_keep_positive_1_negative_0(tmp_path):
    write_k_class_data(tmp_path, classes=("GIST", "LM"), lesions_per_class=2, manifest=False)
    labeled, _ = listing.list_labeled(LocalStore(tmp_path), DataConfig())
    assert {lab.key.split("/")[0]: lab.label for lab in labeled} == {"GIST": 1, "LM": 0}


def test_manifest_lesion_ids_reach_the_image_set_pseudonymized(tmp_path):
    write_k_class_data(tmp_path, lesions_per_class=2)
    loaded = dataset.load_images(LocalStore(tmp_path), DataConfig(classes=K3.classes, negative_class="", image_size=32,
                                                                  min_images_per_class=2, roi="none"),
                                 torch.device("cpu"))
    ids = loaded.images.lesion_ids
    assert len(ids) == len(loaded.images.keys) and all(i.startswith("l-") for i in ids)
    assert len(set(ids)) == 6  # 3 classes x 2 lesions, 2 images each
    assert dataset.class_counts(loaded.images.labels, K3.head_classes) == {"GIST": 4, "LM": 4, "NET": 4}


@pytest.mark.parametrize("edit, fragment", [
    (lambda rows: rows[:2] + [rows[2].replace(",GIST,", ",LM,").replace("GIST/", "LM/x")] + rows[3:],
     "lesion 'GIST-l0' has images of two classes"),
    (lambda rows: rows[:2] + [rows[2].replace(",p001,", ",p999,")] + rows[3:],
     "lesion 'GIST-l0' has images of two patients"),
])
def test_a_lesion_with_two_labels_or_two_patients_is_a_data_error_naming_it(tmp_path, edit, fragment):
    write_k_class_data(tmp_path, lesions_per_class=2)
    rows = (tmp_path / "manifest.csv").read_text().splitlines()
    (tmp_path / "manifest.csv").write_text("\n".join(edit(rows)) + "\n")
    with pytest.raises(DataError, match=fragment) as caught:
        listing.list_labeled(LocalStore(tmp_path), K3)
    assert caught.value.exit_code == 4


def test_a_configured_class_without_a_folder_is_a_data_error_naming_it(tmp_path):
    write_k_class_data(tmp_path, classes=("GIST", "LM"), lesions_per_class=2, manifest=False)
    with pytest.raises(DataError, match="class folder 'NET' is missing or empty") as caught:
        listing.list_labeled(LocalStore(tmp_path), K3)
    assert caught.value.exit_code == 4


def test_only_one_class_folder_is_a_data_error_naming_the_missing_class(tmp_path):
    write_k_class_data(tmp_path, classes=("GIST",), lesions_per_class=2, manifest=False)
    with pytest.raises(DataError, match="class folder 'LM' is missing or empty"):
        listing.list_labeled(LocalStore(tmp_path), DataConfig())


def test_a_manifest_class_with_no_images_is_a_data_error_naming_it(tmp_path):
    write_k_class_data(tmp_path, lesions_per_class=2)
    rows = [r for r in (tmp_path / "manifest.csv").read_text().splitlines() if ",NET," not in r]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    cfg = DataConfig(classes=K3.classes, negative_class="", image_size=32, min_images_per_class=2, roi="none")
    with pytest.raises(DataError, match="class 'NET' has 0 usable images"):
        dataset.load_images(LocalStore(tmp_path), cfg, torch.device("cpu"))


def test_k_class_split_is_stratified_and_keeps_each_lesion_on_one_side():
    keys = [f"k{i}" for i in range(90)]
    labels = np.repeat([0, 1, 2], 30)
    lesion_ids = [f"l{i // 3}" for i in range(90)]  # 3 images per lesion, no patient ids
    plan = split.make_plan(keys, labels, [""] * 90, SplitConfig(), 0, ("GIST", "non-GIST"), None, lesion_ids,
                           ("LM", "NET", "GIST"))
    part = plan.part(None)
    assert "by lesion_id" in part.method
    side = {k: "val" for k in part.val} | {k: "train" for k in part.train}
    for lesion in set(lesion_ids):
        assert len({side[k] for k, lid in zip(keys, lesion_ids) if lid == lesion}) == 1
    for c in range(3):
        assert 0 < sum(1 for k in part.val if labels[keys.index(k)] == c) < 30


def test_a_class_too_small_for_the_split_is_named_with_its_count():
    keys = [f"k{i}" for i in range(21)]
    labels = [0] * 10 + [1] * 10 + [2]
    with pytest.raises(DataError, match=re.escape("class 'GIST' has 1 image(s) (GIST 1, LM 10, NET 10)")) as caught:
        split.make_plan(keys, labels, [""] * 21, SplitConfig(), 0, ("GIST", "non-GIST"), head=("LM", "NET", "GIST"))
    assert caught.value.exit_code == 4


def test_k_fold_names_the_class_with_too_few_images():
    keys = [f"k{i}" for i in range(23)]
    labels = [0] * 10 + [1] * 10 + [2] * 3
    with pytest.raises(DataError, match="split.folds=5 but class 'GIST' has only 3 images"):
        split.make_plan(keys, labels, [""] * 23, SplitConfig(method="kfold", folds=5), 0, ("GIST", "non-GIST"),
                        head=("LM", "NET", "GIST"))
