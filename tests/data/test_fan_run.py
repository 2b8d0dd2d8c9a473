"""Issue 29's acceptance for a whole run: burned-in text outside the fan changes nothing a run
publishes, and figures of image pixels are withheld when the masks are not known."""

import json

import pytest

from tests.conftest import TINY_RUN
from tests.data.screens import fan_image, screenshot

PUBLISHED = ("resnet34/model.safetensors", "predictions.csv", "augmentation_examples.png", "gradcam-resnet34.png")


def _screens(root, variant: int) -> None:
    """Six screenshots per class: the same sectors on black and dark-grey screens, JPEG quality
    75-92, gray and colour text; ``variant`` chooses the text, calipers and boxes."""
    for c, label in enumerate(("GIST", "LM")):
        for i in range(6):
            data, _ = screenshot(fan_image(label, i, 96), 1000 * variant + 10 * i + c, background=(0, 12)[i % 2],
                                 colour=i % 3 == 0, quality=(75, 80, 85, 88, 90, 92)[i])
            path = root / label / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def _run(data, out, run_id: str, **extra):
    from gistnet import config, pipeline

    pipeline.run(config.load_config(None, {"data.uri": str(data), "output.uri": str(out), "output.run_id": run_id,
                                           "data.min_images_per_class": 2, "split.val_fraction": 0.34,
                                           **{**TINY_RUN, "train.batch_size": 4}, **extra}, environ={}))
    return out / run_id


@pytest.mark.e2e
def test_different_text_outside_the_fan_gives_the_same_weights_predictions_and_figures(tmp_path):
    runs = []
    for variant in (0, 1):
        _screens(tmp_path / f"data{variant}", variant)
        runs.append(_run(tmp_path / f"data{variant}", tmp_path / "out", f"v{variant}"))
    for name in PUBLISHED:
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name
    assert json.loads((runs[0] / "report.json").read_text())["dataset"]["figures_withheld"] == ""
    # data.roi: none: the text is in the images, so no figure of them is drawn, and the report says why
    whole = _run(tmp_path / "data0", tmp_path / "out", "whole", **{"data.roi": "none"})
    assert not (whole / "augmentation_examples.png").exists() and not (whole / "gradcam-resnet34.png").exists()
    reason = json.loads((whole / "report.json").read_text())["dataset"]["figures_withheld"]
    assert reason.startswith("12 of 12 images have no known mask") and "data.roi: none" in reason
    assert f"No figure of image pixels (augmentation examples, Grad-CAM): {reason}." in (whole / "report.md").read_text()
    assert 'id="figures-withheld"' in (whole / "report.html").read_text()
