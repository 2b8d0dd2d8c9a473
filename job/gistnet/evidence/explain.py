"""Grad-CAM maps of a trained model on its validation images, and their sanity check.

Grad-CAM (Selvaraju et al. 2017) weights the feature maps of the last ResNet stage
(``layer4``) by the gradient of the called class: the map shows where, at that stage's
resolution (7x7 cells at 224 px), the evidence for the call lies. It is computed with
captum's ``LayerGradCam``, batched, on the device the model trained on.

The model-randomisation check (Adebayo et al. 2018, "Sanity checks for saliency maps")
computes the same maps with a copy of the model whose weights are re-initialised. Maps that
barely change (high Spearman rank correlation) reflect the image, not what the model learned,
and explain nothing; the report flags them.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

METHOD = "Grad-CAM (captum LayerGradCam, ReLU; shown upsampled bilinearly)"
LAYER = "layer4"
TARGET = "the class the model called (probability >= 0.5: positive)"
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


def spearman_per_image(maps_a: torch.Tensor, maps_b: torch.Tensor) -> list[float]:
    """Spearman rank correlation of each pair of maps, compared cell by cell at the layer's resolution
    (upsampling would only add interpolated values); images where either map is constant are left out."""
    from scipy.stats import ConstantInputWarning, spearmanr

    out = []
    for a, b in zip(maps_a, maps_b):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConstantInputWarning)
            rho = spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic
        if np.isfinite(rho):
            out.append(float(rho))
    return out


def randomisation_note(median: float | None, checked: int, shown: int) -> str:
    if median is None:
        return ("randomisation check not computable: every map was constant (no positive Grad-CAM evidence, or "
                "a single layer4 cell at small image sizes) or no image was shown; the maps cannot be interpreted")
    if median >= FLAG_SPEARMAN:
        return (f"FLAG: the maps barely change when the weights are randomised (median Spearman {median:.2f} >= "
                f"{FLAG_SPEARMAN} over {checked} of {shown} images): they reflect the image rather than what the "
                "model learned, so they explain nothing about its decisions")
    return (f"the maps change when the weights are randomised (median Spearman {median:.2f} < {FLAG_SPEARMAN} over "
            f"{checked} of {shown} images): they depend on the learned weights, as the check requires; they show "
            "where the evidence for the call lies at layer4 resolution, not why, and are not a localisation of the lesion")


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
    trained_maps = gradcam_maps(model, shown_images, called, preprocess, batch_size)
    random_maps = gradcam_maps(randomised_copy(model, seed), shown_images, called, preprocess, batch_size)
    rhos = spearman_per_image(trained_maps, random_maps)
    gallery_figure(model_name, shown_images.cpu(), upsample(trained_maps, tuple(images.shape[-2:])),
                   labels.cpu()[gallery.indices], probabilities.detach().float().cpu()[gallery.indices], class_names, figure_path)
    return {
        "method": METHOD,
        "layer": LAYER,
        "target": TARGET,
        "images": len(gallery.indices),
        "misclassified_shown": gallery.misclassified,
        **_randomisation(rhos, len(gallery.indices)),
    }


def _randomisation(rhos: list[float], shown: int) -> dict:
    median = float(np.median(rhos)) if rhos else None
    return {"randomisation_spearman": median, "randomisation_images": len(rhos), "randomisation_values": rhos,
            "randomisation_flagged": median is not None and median >= FLAG_SPEARMAN,
            "note": randomisation_note(median, len(rhos), shown)}


def combine(summaries: dict[int, dict]) -> dict:
    """One model's explain section over its folds (fold index -> that fold's summary): the
    randomisation check pools the per-image correlations of every fold."""
    rhos = [rho for s in summaries.values() for rho in s["randomisation_values"]]
    shown = sum(s["images"] for s in summaries.values())
    first = next(iter(summaries.values()))
    return {"method": first["method"], "layer": first["layer"], "target": first["target"], "images": shown,
            "misclassified_shown": sum(s["misclassified_shown"] for s in summaries.values()),
            "folds": sorted(summaries), **_randomisation(rhos, shown)}


def image_title(label: int, probability: float, class_names: tuple[str, str]) -> tuple[str, bool]:
    """The title over one image (true class, P(positive)) and whether the call at 0.5 was wrong."""
    positive, negative = class_names
    wrong = (probability >= 0.5) != (label == 1)
    return f"true {positive if label == 1 else negative}\nP({positive}) = {probability:.2f}", wrong


def gallery_figure(model_name: str, images: torch.Tensor, maps: torch.Tensor, labels: torch.Tensor,
                   probabilities: torch.Tensor, class_names: tuple[str, str], path: str | Path,
                   columns: int = 6) -> None:
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
    fig.suptitle(f"{model_name}: Grad-CAM ({LAYER}) on validation images; red title: misclassified", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
