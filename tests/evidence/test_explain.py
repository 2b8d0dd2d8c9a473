"""Grad-CAM (captum) against a hand-computed Grad-CAM, gallery selection, and the randomisation check."""

import numpy as np
import pytest
import torch

from gistnet import models
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
    # at 96 px layer4 is 3x3 and layer3 6x6: the check runs at layer2 (12x12 cells)
    assert honest["images"] == 4 and honest["misclassified_shown"] == 2
    assert honest["layer"] == "layer2" and honest["layer_cells"] == [12, 12]
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert honest["randomisation_images"] == 4 and honest["randomisation_spearman"] < explain.FLAG_SPEARMAN

    monkeypatch.setattr(explain, "randomised_copy", lambda m, seed: m)  # a "randomisation" that changes nothing
    broken = explain.explain("resnet34", *args, tmp_path / "b.png")
    assert broken["randomisation_spearman"] == pytest.approx(1.0)
    assert broken["randomisation_flagged"] and broken["note"].startswith("FLAG: the maps at layer2 (12x12 cells) "
                                                                         "barely change")
    # the honest check ran on every shown image and did not flag the trained maps (it was
    # "is None or < 1.0", which a check that never ran, or one that returned 0.99, passed)
    assert honest["randomisation_images"] == 4 and len(honest["randomisation_values"]) == 4
    assert honest["randomisation_spearman"] is not None and honest["randomisation_spearman"] < explain.FLAG_SPEARMAN
    # (the honest model here is barely trained, so its maps may be flagged as untrained-like: the
    # comparison against an untrained network is asserted in test_an_untrained_network_is_flagged)


def test_folds_combine_into_one_check_over_every_image():
    def fold(values, images):
        return {"method": explain.METHOD, "layer": "layer4", "target": explain.TARGET, "images": images,
                "misclassified_shown": 1, **explain._randomisation(values, images)}

    combined = explain.combine({0: fold([0.1, 0.2, 0.9], 4), 2: fold([0.8, 0.7], 3)})
    assert combined["images"] == 7 and combined["misclassified_shown"] == 2 and combined["folds"] == [0, 2]
    assert combined["randomisation_spearman"] == pytest.approx(0.7)  # median of all five images, not of folds
    assert combined["randomisation_images"] == 5 and combined["randomisation_flagged"]

    def with_reference(values, reference):
        return {**fold(values, len(values)), "reference_model": "resnet34",
                **explain._randomisation(values, len(values), "layer2", (8, 8), reference, "resnet34",
                                         [list(pair) for pair in zip(values, reference)])}

    # the untrained reference pools across folds too: three images per fold are too few alone, six are enough
    low, near_zero = [-0.9, -0.8, -0.85], [0.05, -0.02, 0.1]
    alone = with_reference(low, near_zero)
    assert alone["reference_p_value"] is None and alone["randomisation_flagged"] and "not computable" in alone["note"]
    pooled = explain.combine({0: alone, 1: with_reference([-0.7, -0.75, -0.95], [0.0, 0.08, -0.05])})
    from scipy.stats import wilcoxon

    differences = np.array(low + [-0.7, -0.75, -0.95]) - np.array(near_zero + [0.0, 0.08, -0.05])
    assert pooled["reference_p_value"] == pytest.approx(wilcoxon(differences, alternative="less").pvalue)
    assert pooled["reference_p_value"] == pytest.approx(1 / 64)  # all six differences negative: exact 1 of 2^6
    assert pooled["reference_p_value"] < explain.ALPHA and not pooled["randomisation_flagged"]
    assert "an untrained resnet34" in pooled["note"] and "this is all the check shows" in pooled["note"]


@pytest.mark.parametrize("size, layer, cells", [(224, "layer4", (7, 7)), (112, "layer3", (7, 7)),
                                                (64, "layer2", (8, 8)), (32, "layer1", (8, 8))])
def test_the_target_layer_gives_at_least_7x7_cells_at_the_image_size(size, layer, cells):
    model = models.build_model("resnet34", seed=0).eval()
    assert explain.target_layer(model, size) == (layer, cells)
    # Grad-CAM at that layer has that many cells
    maps = explain.gradcam_maps(model, images(2, size), torch.tensor([0, 1]), train.Preprocess(CPU), 2, layer)
    assert maps.shape == (2, *cells)


def test_an_untrained_network_is_flagged(tmp_path):
    """A freshly initialised ResNet-34 passes the plain randomisation check (its maps change when
    re-initialised); compared against an untrained network of the same architecture, it is flagged."""
    untrained = models.build_model("resnet34", seed=11).eval()
    labels = torch.tensor([1, 0] * 6)
    p = torch.tensor([0.9, 0.1, 0.8, 0.3, 0.6, 0.45, 0.7, 0.2, 0.55, 0.35, 0.3, 0.65])
    result = explain.explain("resnet34", untrained, images(12, 64, seed=4), labels, p, train.Preprocess(CPU), 6,
                             ("GIST", "LM"), 12, 6, 0, tmp_path / "g.png")
    assert result["layer"] == "layer2" and result["layer_cells"] == [8, 8]  # not layer4's 2x2 at 64 px
    assert result["randomisation_images"] >= explain.MIN_IMAGES
    assert result["randomisation_spearman"] < explain.FLAG_SPEARMAN  # the plain check alone would pass it
    assert result["reference_p_value"] >= explain.ALPHA
    assert result["untrained_like"] and result["randomisation_flagged"]
    assert result["note"].startswith("FLAG: the maps at layer2 (8x8 cells) change when the weights are re-initialised")
    assert "cannot tell these maps from an untrained network's" in result["note"]
    assert "learned weights" not in result["note"] and "as the check requires" not in result["note"]


def test_maps_more_stable_than_an_untrained_networks_are_flagged():
    """The comparison with the untrained network is one-sided: a model whose maps change *less*
    under re-initialisation than an untrained network's (higher Spearman, still below 0.5) fails
    the check; one whose maps change more passes. Paired per image (Wilcoxon signed-rank)."""
    from scipy.stats import wilcoxon

    reference = [-0.2, 0.0, 0.05, -0.1, 0.1, 0.02, -0.05]
    stable = [0.3, 0.35, 0.4, 0.45, 0.38, 0.42, 0.33]
    pairs = [list(pair) for pair in zip(stable, reference)]
    result = explain._randomisation(stable, 7, "layer2", (8, 8), reference, "resnet34", pairs)
    assert result["randomisation_spearman"] < explain.FLAG_SPEARMAN
    expected = wilcoxon(np.subtract(stable, reference), alternative="less").pvalue
    assert result["reference_p_value"] == pytest.approx(expected) and expected > 0.99
    assert result["untrained_like"] and result["randomisation_flagged"] and result["note"].startswith("FLAG")
    changing = [-0.5, -0.4, -0.3, -0.45, -0.2, -0.35, -0.6]
    passed = explain._randomisation(changing, 7, "layer2", (8, 8), reference, "resnet34",
                                    [list(pair) for pair in zip(changing, reference)])
    assert passed["reference_p_value"] == pytest.approx(1 / 128) and not passed["randomisation_flagged"]


def test_pairs_keep_only_images_where_both_correlations_are_defined():
    rng = np.random.default_rng(2)
    a, b = torch.tensor(rng.random((4, 7, 7))), torch.tensor(rng.random((4, 7, 7)))
    b[1] = 0.0  # constant: undefined for the model
    each = explain.spearman_each(a, b)
    assert each[1] is None and all(r is not None for r in (each[0], each[2], each[3]))
    reference = [0.1, 0.2, None, 0.4]
    assert explain.paired(each, reference) == [[each[0], 0.1], [each[3], 0.4]]
