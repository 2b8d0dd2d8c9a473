"""Grad-CAM (captum) against a hand-computed Grad-CAM, gallery selection, and the randomisation check."""

import numpy as np
import pytest
import torch

from gistnet.evidence import explain
from gistnet.training import train

CPU = torch.device("cpu")


def noisy_resnet34(seed: int = 0) -> torch.nn.Module:
    """A ResNet-34 whose every parameter and BatchNorm statistic differs from a fresh initialisation."""
    torch.manual_seed(seed)
    model = train.build_model("resnet34")
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.add_(0.05 * torch.randn_like(tensor))
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.add_(0.05 * torch.randn_like(buffer))
            elif name.endswith("running_var"):
                buffer.mul_(1 + 0.1 * torch.rand_like(buffer))
    return model.eval()


def images(n: int, size: int = 64, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=generator) * 255).to(torch.uint8)


def hand_gradcam(model, x_uint8, targets):
    """Selvaraju et al. 2017, written out: ReLU(sum_k mean_ij(dy_c/dA_k) * A_k) at layer4."""
    preprocess = train.Preprocess(CPU)
    captured = {}
    hook = model.layer4.register_forward_hook(lambda _m, _i, out: captured.update(a=out))
    try:
        logits = model(preprocess(x_uint8))
    finally:
        hook.remove()
    activation = captured["a"]
    chosen = logits.gather(1, targets[:, None]).sum()
    gradient, = torch.autograd.grad(chosen, activation)
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * activation).sum(dim=1)).detach()


def test_gradcam_matches_a_hand_computed_gradcam():
    model = noisy_resnet34()
    x, targets = images(5), torch.tensor([0, 1, 1, 0, 1])
    maps = explain.gradcam_maps(model, x, targets, train.Preprocess(CPU), batch_size=2)
    assert maps.shape == (5, 2, 2)  # layer4 of a 64 px input: 2x2 cells
    torch.testing.assert_close(maps, hand_gradcam(model, x, targets), rtol=1e-4, atol=1e-6)
    assert explain.upsample(maps, (64, 64)).shape == (5, 64, 64)
    assert all(p.grad is None for p in model.parameters())  # no gradient left behind on the weights


def test_randomised_copy_reinitialises_every_layer_and_leaves_the_model_alone():
    model = noisy_resnet34()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = explain.randomised_copy(model, seed=3)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
        if value.is_floating_point():
            assert not torch.equal(copy.state_dict()[key], value), key
    again = explain.randomised_copy(model, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), again.state_dict().values()))


def test_spearman_per_image_matches_ranks_computed_by_hand_and_skips_constant_maps():
    rng = np.random.default_rng(0)
    a, b = torch.tensor(rng.random((3, 7, 7))), torch.tensor(rng.random((3, 7, 7)))
    b[1] = a[1] * 2 + 1  # same ranking
    b[2] = 0.0  # constant: undefined, left out

    def by_hand(u, v):
        ru, rv = np.argsort(np.argsort(u.ravel())), np.argsort(np.argsort(v.ravel()))
        return np.corrcoef(ru, rv)[0, 1]

    rhos = explain.spearman_per_image(a, b)
    assert len(rhos) == 2
    assert rhos[0] == pytest.approx(by_hand(a[0].numpy(), b[0].numpy()))
    assert rhos[1] == pytest.approx(1.0)


def test_gallery_shows_the_misclassified_first_then_the_most_confident_correct_per_class():
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    p = torch.tensor([0.95, 0.80, 0.40, 0.10, 0.05, 0.30, 0.65, 0.99])
    gallery = explain.select_gallery(labels, p, max_misclassified=5, correct_per_class=1)
    # wrong, most confident first: 7 (P 0.99 for a negative), 3 (0.90 sure of negative), 6 (0.65), 2 (0.60);
    # then the most confident correct positive (0) and negative (4)
    assert gallery.indices == [7, 3, 6, 2, 0, 4] and gallery.misclassified == 4
    limited = explain.select_gallery(labels, p, max_misclassified=2, correct_per_class=0)
    assert limited.indices == [7, 3] and limited.misclassified == 2


def test_titles_use_the_configured_class_names():
    assert explain.image_title(1, 0.83, ("Malignant", "Benign")) == ("true Malignant\nP(Malignant) = 0.83", False)
    assert explain.image_title(0, 0.83, ("Malignant", "Benign")) == ("true Benign\nP(Malignant) = 0.83", True)


def test_explain_flags_maps_that_do_not_change_under_randomisation(tmp_path, monkeypatch):
    model = noisy_resnet34()
    labels, p = torch.tensor([1, 0, 1, 0]), torch.tensor([0.7, 0.2, 0.3, 0.9])
    args = (model, images(4, 96), labels, p, train.Preprocess(CPU), 4, ("GIST", "LM"), 12, 3, 0)

    honest = explain.explain("resnet34", *args, tmp_path / "a.png")
    assert honest["images"] == 4 and honest["misclassified_shown"] == 2 and honest["layer"] == "layer4"
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"

    monkeypatch.setattr(explain, "randomised_copy", lambda m, seed: m)  # a "randomisation" that changes nothing
    broken = explain.explain("resnet34", *args, tmp_path / "b.png")
    assert broken["randomisation_spearman"] == pytest.approx(1.0)
    assert broken["randomisation_flagged"] and broken["note"].startswith("FLAG")
    # the honest check ran on every shown image and did not flag the trained maps (it was
    # "is None or < 1.0", which a check that never ran, or one that returned 0.99, passed)
    assert honest["randomisation_images"] == 4 and len(honest["randomisation_values"]) == 4
    assert honest["randomisation_spearman"] is not None and honest["randomisation_spearman"] < explain.FLAG_SPEARMAN
    assert not honest["randomisation_flagged"] and not honest["note"].startswith("FLAG")


def test_folds_combine_into_one_check_over_every_image():
    def fold(values, images):
        return {"method": explain.METHOD, "layer": "layer4", "target": explain.TARGET, "images": images,
                "misclassified_shown": 1, **explain._randomisation(values, images)}

    combined = explain.combine({0: fold([0.1, 0.2, 0.9], 4), 2: fold([0.8, 0.7], 3)})
    assert combined["images"] == 7 and combined["misclassified_shown"] == 2 and combined["folds"] == [0, 2]
    assert combined["randomisation_spearman"] == pytest.approx(0.7)  # median of all five images, not of folds
    assert combined["randomisation_images"] == 5 and combined["randomisation_flagged"]
