"""Grad-CAM maps of a trained model on its validation images, and their sanity check.

Grad-CAM (Selvaraju et al. 2017) weights the feature maps of a ResNet stage by the gradient
of the called class: the map shows where, at that stage's resolution, the evidence for the
call lies. The stage is the deepest whose map has at least 7 x 7 cells at the run's image
size (``layer4`` from 224 px; ``layer3``, ``layer2`` or ``layer1`` for smaller images, named in
the report): a rank correlation over 2 x 2 cells moves in steps of 0.2 and says nothing.
It is computed with captum's ``LayerGradCam``, batched, on the device the model trained on.

The model-randomisation check (Adebayo et al. 2018, "Sanity checks for saliency maps")
computes the same maps with a copy of the model whose weights are re-initialised. Maps that
barely change (high Spearman rank correlation) reflect the image, not the weights; the
report flags them. That check passes any network, an untrained one too, so it is run
again on an untrained network of the same architecture (``models.build_model``) on the same
images; unless the model's maps change *more* under re-initialisation than the untrained
network's do (per image, a paired one-sided Wilcoxon signed-rank test of the model's
correlation minus the reference's, ``alternative="less"``, p < 0.05), the check has not shown
that the maps reflect anything learned, and the report flags that: maps as stable as, or more
stable than, an untrained network's fail. The note states what the check showed, nothing more.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gistnet import models

METHOD = "Grad-CAM (captum LayerGradCam, ReLU; shown upsampled bilinearly)"
LAYER = "layer4"
STAGES = ("layer4", "layer3", "layer2", "layer1")  # deepest first
MIN_CELLS = 7  # a map of at least MIN_CELLS x MIN_CELLS at the run's image size
ALPHA = 0.05  # model vs untrained reference: p at or above this cannot tell them apart
MIN_IMAGES = 5  # fewer paired correlations: the comparison is not computable
TEST = "paired one-sided Wilcoxon signed-rank"
TARGET = "the class the model called (probability >= 0.5: positive)"  # with K: else the most probable other class
# Median rank correlation at or above which the maps count as unchanged by randomisation.
FLAG_SPEARMAN = 0.5


@dataclass(frozen=True)
class Gallery:
    """Indices into the validation set to show: misclassified first, then confident correct ones."""

    indices: list[int]
    misclassified: int


def select_gallery(labels: torch.Tensor, probabilities: torch.Tensor, max_misclassified: int,
                   correct_per_class: int, threshold: float = 0.5) -> Gallery:
    """Every misclassified image (most confidently wrong first) up to ``max_misclassified``,
    then the ``correct_per_class`` most confident correct images of the positive, then the
    negative class."""
    y = labels.cpu().numpy().astype(int)
    p = probabilities.detach().float().cpu().numpy()
    called = (p >= threshold).astype(int)
    confidence = np.where(called == 1, p, 1.0 - p)
    order = np.argsort(-confidence, kind="stable")
    wrong = [int(i) for i in order if called[i] != y[i]][:max_misclassified]
    right = [int(i) for cls in (1, 0) for i in [j for j in order if called[j] == y[j] == cls][:correct_per_class]]
    return Gallery(wrong + right, len(wrong))


def gradcam_maps(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, preprocess,
                 batch_size: int, layer: str = LAYER) -> torch.Tensor:
    """Grad-CAM of ``targets`` (class indices) for uint8 ``images`` (N, 3, H, W), at the layer's
    resolution (N, h, w), on the CPU."""
    from captum.attr import LayerGradCam

    model.eval()
    cam = LayerGradCam(model, model.get_submodule(layer))
    maps = []
    for start in range(0, len(images), batch_size):
        x = preprocess(images[start:start + batch_size])
        with torch.enable_grad():
            attribution = cam.attribute(x, target=targets[start:start + batch_size].to(x.device),
                                        relu_attributions=True)
        maps.append(attribution[:, 0].detach().float().cpu())
    return torch.cat(maps) if maps else torch.zeros((0, 1, 1))


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Layer-resolution maps (N, h, w) to image size, bilinear, as Grad-CAM is usually shown."""
    from captum.attr import LayerAttribution

    if len(maps) == 0:
        return torch.zeros((0, *size))
    return LayerAttribution.interpolate(maps[:, None], size, interpolate_mode="bilinear")[:, 0]


def randomised_copy(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of ``model`` with every layer re-initialised (weights, biases, BatchNorm statistics)."""
    copied = copy.deepcopy(model)
    device = next(copied.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for module in copied.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return copied.eval()


def spearman_each(maps_a: torch.Tensor, maps_b: torch.Tensor) -> list[float | None]:
    """Spearman rank correlation of each pair of maps, compared cell by cell at the layer's resolution
    (upsampling would only add interpolated values); None where either map is constant."""
    from scipy.stats import ConstantInputWarning, spearmanr

    out: list[float | None] = []
    for a, b in zip(maps_a, maps_b):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConstantInputWarning)
            rho = spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic
        out.append(float(rho) if np.isfinite(rho) else None)
    return out


def spearman_per_image(maps_a: torch.Tensor, maps_b: torch.Tensor) -> list[float]:
    """``spearman_each`` with the images where either map is constant left out."""
    return [rho for rho in spearman_each(maps_a, maps_b) if rho is not None]


def paired(model_each: list[float | None], reference_each: list[float | None]) -> list[list[float]]:
    """[model, reference] correlations of the images where both are defined."""
    return [[a, b] for a, b in zip(model_each, reference_each) if a is not None and b is not None]


def target_layer(model: torch.nn.Module, image_size: int) -> tuple[str, tuple[int, int]]:
    """The deepest ResNet stage whose output has at least ``MIN_CELLS`` x ``MIN_CELLS`` cells for
    ``image_size`` px inputs, and that size (found by one forward pass of a blank image); the
    shallowest stage when none has (the report then says how many cells the map has)."""
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [model.get_submodule(name).register_forward_hook(
        lambda _m, _i, out, name=name: sizes.update({name: tuple(out.shape[-2:])})) for name in STAGES]
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    for name in STAGES:
        if min(sizes[name]) >= MIN_CELLS:
            return name, sizes[name]
    return STAGES[-1], sizes[STAGES[-1]]


def untrained_reference(model_name: str, seed: int, device: torch.device, num_classes: int = 2) -> torch.nn.Module:
    """An untrained network of the model's architecture, built as training builds it."""
    return models.build_model(model_name, seed=seed, num_classes=num_classes).to(device).eval()


@torch.no_grad()
def called_targets(model: torch.nn.Module, images: torch.Tensor, called: torch.Tensor, preprocess) -> torch.Tensor:
    """The output index of each image's call: with two outputs the call itself (1 positive, 0
    negative); with K (the positive class last, ``config.head_order``) K-1 when called positive,
    else the most probable of the other classes."""
    k = model.fc.out_features
    if k == 2:
        return called
    model.eval()
    others = model(preprocess(images)).float()[:, :k - 1].argmax(dim=1).to(called.device)
    return torch.where(called == 1, torch.full_like(called, k - 1), others)


def compare_with_untrained(pairs: list[list[float]]) -> float | None:
    """One-sided paired Wilcoxon signed-rank p-value (scipy): on the same images, are the model's
    correlations lower (its maps changed more by re-initialisation) than an untrained network's?
    ``pairs`` are [model, reference] per image; None with fewer than ``MIN_IMAGES`` pairs; 1 when
    every difference is 0 (no evidence that they are lower)."""
    from scipy.stats import wilcoxon

    if len(pairs) < MIN_IMAGES:
        return None
    differences = np.array([a - b for a, b in pairs], dtype=np.float64)
    if not np.any(differences):
        return 1.0
    return float(wilcoxon(differences, alternative="less").pvalue)


def _cells(cells) -> str:
    return f"{cells[0]}x{cells[1]}"


def randomisation_note(median: float | None, checked: int, shown: int, layer: str = LAYER, cells=(7, 7),
                       reference: float | None = None, p_value: float | None = None, model_name: str = "model",
                       paired_images: int = 0) -> str:
    where = f"at {layer} ({_cells(cells)} cells)"
    small = (f"; the map has fewer than {MIN_CELLS}x{MIN_CELLS} cells at this image size, so each correlation "
             "is coarse") if min(cells) < MIN_CELLS else ""
    if median is None:
        return (f"randomisation check not computable {where}: every map was constant (no positive Grad-CAM "
                f"evidence) or no image was shown; the check shows nothing about these maps{small}")
    ref = "n/a" if reference is None else f"{reference:.2f}"
    if median >= FLAG_SPEARMAN:
        return (f"FLAG: the maps {where} barely change when the weights are re-initialised (median Spearman "
                f"{median:.2f} >= {FLAG_SPEARMAN} over {checked} of {shown} images; an untrained {model_name}: "
                f"{ref}): they follow the image rather than the weights{small}")
    changed = (f"the maps {where} change when the weights are re-initialised (median Spearman {median:.2f} < "
               f"{FLAG_SPEARMAN} over {checked} of {shown} images)")
    if p_value is None:
        return (f"FLAG: {changed}, but the comparison with an untrained {model_name} of the same architecture is not "
                f"computable ({paired_images} images with both correlations; at least {MIN_IMAGES} are needed), "
                f"so the check does not show that the maps reflect anything the model learned{small}")
    if p_value >= ALPHA:
        return (f"FLAG: {changed}, but not more than an untrained {model_name} of the same architecture's do on the "
                f"same images (median {ref}; {TEST} p = {p_value:.2f}): the check cannot tell these maps from an "
                f"untrained network's, so it does not show that they reflect anything the model learned{small}")
    return (f"{changed}, and more than an untrained {model_name} of the same architecture's do on the same images "
            f"(median {ref}; {TEST} p = {p_value:.3g}); this is all the check shows: the maps mark where the evidence "
            f"for the call lies at {layer} resolution, not why, and are not a localisation of the lesion{small}")


def explain(model_name: str, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
            probabilities: torch.Tensor, preprocess, batch_size: int, class_names: tuple[str, str],
            max_misclassified: int, correct_per_class: int, seed: int, figure_path: str | Path) -> dict:
    """Grad-CAM gallery PNG at ``figure_path`` and the ``models.<m>.explain`` report section.

    ``class_names`` is (positive, negative); ``probabilities`` are P(positive) per image.
    """
    gallery = select_gallery(labels, probabilities, max_misclassified, correct_per_class)
    index = torch.tensor(gallery.indices, dtype=torch.long, device=images.device)
    shown_images = images.index_select(0, index)
    called = (probabilities.detach().index_select(0, index.to(probabilities.device)) >= 0.5).long()
    called = called_targets(model, shown_images, called, preprocess)
    layer, cells = target_layer(model, images.shape[-1])
    trained_maps = gradcam_maps(model, shown_images, called, preprocess, batch_size, layer)
    random_maps = gradcam_maps(randomised_copy(model, seed), shown_images, called, preprocess, batch_size, layer)
    rhos = spearman_each(trained_maps, random_maps)
    untrained = untrained_reference(model_name, seed + 1, next(model.parameters()).device, model.fc.out_features)
    reference = spearman_each(gradcam_maps(untrained, shown_images, called, preprocess, batch_size, layer),
                              gradcam_maps(randomised_copy(untrained, seed), shown_images, called, preprocess,
                                           batch_size, layer))
    gallery_figure(model_name, shown_images.cpu(), upsample(trained_maps, tuple(images.shape[-2:])),
                   labels.cpu()[gallery.indices], probabilities.detach().float().cpu()[gallery.indices], class_names,
                   figure_path, layer)
    return {
        "method": METHOD,
        "layer": layer,
        "layer_cells": list(cells),
        "target": TARGET,
        "images": len(gallery.indices),
        "misclassified_shown": gallery.misclassified,
        "reference": f"an untrained {model_name} of the same architecture (torchvision initialisation, seed {seed + 1})",
        "reference_model": model_name,
        **_randomisation([r for r in rhos if r is not None], len(gallery.indices), layer, cells,
                         [r for r in reference if r is not None], model_name, paired(rhos, reference)),
    }


def _randomisation(rhos: list[float], shown: int, layer: str = LAYER, cells=(7, 7), reference: list[float] | None = None,
                   model_name: str = "model", pairs: list[list[float]] | None = None) -> dict:
    """The check's fields: ``rhos`` and ``reference`` the defined correlations of the model and of
    the untrained network, ``pairs`` the [model, reference] ones of the images where both are."""
    reference, pairs = reference or [], pairs or []
    median = float(np.median(rhos)) if rhos else None
    ref_median = float(np.median(reference)) if reference else None
    p_value = compare_with_untrained(pairs)
    unchanged = median is not None and median >= FLAG_SPEARMAN
    like_untrained = median is not None and not unchanged and (p_value is None or p_value >= ALPHA)
    return {"randomisation_spearman": median, "randomisation_images": len(rhos), "randomisation_values": rhos,
            "reference_spearman": ref_median, "reference_values": reference, "reference_pairs": pairs,
            "reference_test": f"{TEST} (scipy wilcoxon, alternative='less'): model minus untrained, per image",
            "reference_p_value": p_value,
            "untrained_like": like_untrained,
            "randomisation_flagged": unchanged or like_untrained,
            "note": randomisation_note(median, len(rhos), shown, layer, cells, ref_median, p_value, model_name,
                                       len(pairs))}


def combine(summaries: dict[int, dict]) -> dict:
    """One model's explain section over its folds (fold index -> that fold's summary): the
    randomisation check pools the per-image correlations of every fold, the reference's too."""
    rhos = [rho for s in summaries.values() for rho in s["randomisation_values"]]
    reference = [rho for s in summaries.values() for rho in s.get("reference_values", [])]
    pairs = [pair for s in summaries.values() for pair in s.get("reference_pairs", [])]
    shown = sum(s["images"] for s in summaries.values())
    first = next(iter(summaries.values()))
    cells = first.get("layer_cells", [7, 7])
    model_name = first.get("reference_model", "model")
    return {"method": first["method"], "layer": first["layer"], "layer_cells": cells, "target": first["target"],
            "images": shown, "misclassified_shown": sum(s["misclassified_shown"] for s in summaries.values()),
            "reference": first.get("reference", ""), "reference_model": model_name, "folds": sorted(summaries),
            **_randomisation(rhos, shown, first["layer"], cells, reference, model_name, pairs)}


def image_title(label: int, probability: float, class_names: tuple[str, str]) -> tuple[str, bool]:
    """The title over one image (true class, P(positive)) and whether the call at 0.5 was wrong."""
    positive, negative = class_names
    wrong = (probability >= 0.5) != (label == 1)
    return f"true {positive if label == 1 else negative}\nP({positive}) = {probability:.2f}", wrong


def gallery_figure(model_name: str, images: torch.Tensor, maps: torch.Tensor, labels: torch.Tensor,
                   probabilities: torch.Tensor, class_names: tuple[str, str], path: str | Path,
                   layer: str = LAYER, columns: int = 6) -> None:
    """Each map over its grayscale image; the title gives the true class and P(positive), red when misclassified."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.4 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        gray = images[i].float().mean(0).numpy() / 255.0
        heat = maps[i].numpy()
        peak = float(heat.max())
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
        ax.imshow(heat / peak if peak > 0 else heat, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        text, wrong = image_title(int(labels[i]), float(probabilities[i]), class_names)
        ax.set_title(text, fontsize=8, color="red" if wrong else "black")
    if n == 0:
        axes.flat[0].text(0.5, 0.5, "no validation image selected", ha="center", va="center")
    fig.suptitle(f"{model_name}: Grad-CAM ({layer}) on validation images; red title: misclassified", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
