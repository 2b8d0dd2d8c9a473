"""Which external images leave the metrics (serving/development.exclusions): development images,
development patients, repeats within the set."""

import pytest

from gistnet.errors import DataError
from gistnet.serving import development


def test_repeats_count_once_and_development_patients_are_excluded():
    keys = ["c/3.png", "c/1.png", "c/2.png", "b/1.png", "b/2.png", "a/1.png"]
    digests = ["x", "x", "x", "y", "z", "w"]  # c/* one image three times under three patient ids
    patients = ["p3", "p1", "p2", "dev", "", "q"]
    reasons = development.exclusions(keys, digests, patients, [1, 1, 1, 0, 0, 1], {"w"}, {"dev"})
    assert reasons == ["repeat of c/1.png", "", "repeat of c/1.png", development.DEVELOPMENT_PATIENT, "",
                       development.DEVELOPMENT_IMAGE]


def test_an_image_without_its_own_patient_id_never_matches_a_development_patient():
    assert development.exclusions(["a"], ["d"], [""], [0], set(), {""}) == [""]


def test_repeats_labelled_both_classes_are_refused():
    with pytest.raises(DataError, match="the same image is labeled both classes: a.png and b.png"):
        development.exclusions(["b.png", "a.png"], ["d", "d"], ["", ""], [0, 1], set(), set())
