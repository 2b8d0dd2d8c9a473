"""Lesion scores: the mean of the images' logits; one label and one patient per lesion."""

from __future__ import annotations

import numpy as np
import pytest

from gistnet.evidence import lesions


def test_lesion_ids_default_to_patient_then_image():
    assert lesions.lesion_ids(["a", "b"], ["p1", "p1"], ["L1", "L2"]) == (["L1", "L2"], "lesion_id")
    assert lesions.lesion_ids(["a", "b"], ["p1", "p1"]) == (["patient:p1", "patient:p1"], "patient_id")
    assert lesions.lesion_ids(["a", "b"]) == (["image:a", "image:b"], "image")
    assert lesions.lesion_ids(["a", "b"], ["p1", ""])[0] == ["patient:p1", "image:b"]


def test_mean_of_logits_per_lesion():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0], [1.0, 1.0]])
    out = lesions.aggregate(logits, [0, 0, 1, 1], ["L1", "L1", "L2", "L2"], ["p", "p", "q", "q"])
    assert out.ids == ["L1", "L2"]
    np.testing.assert_allclose(out.logits, [[1.0, 0.5], [3.0, -2.0]])
    np.testing.assert_array_equal(out.labels, [0, 1])
    assert out.patients == ["p", "q"] and out.images.tolist() == [2, 2]


def test_a_lesion_with_two_labels_or_two_patients_is_named():
    with pytest.raises(lesions.LesionError, match="lesion 'L1' has images labelled with 2 classes"):
        lesions.aggregate(np.zeros((2, 2)), [0, 1], ["L1", "L1"])
    with pytest.raises(lesions.LesionError, match="lesion 'L1' has images of 2 patients"):
        lesions.aggregate(np.zeros((2, 2)), [0, 0], ["L1", "L1"], ["p", "q"])
