"""Augmentation on the training device with kornia.

``paper`` mode reproduces the study: every training image is kept once plus one copy for
each of rotation, flip, CLAHE, log contrast and sigmoid contrast (113 -> 678 images), built
once. ``online`` mode draws a random composition of the same operations for every batch.
Both run on whatever device holds the images, so on a GPU nothing goes back to the host.
"""

from __future__ import annotations

from typing import Callable

import torch
from kornia import enhance
from kornia.geometry import transform

from gistnet.config import AugmentationConfig

Op = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
OPERATIONS = ("rotation", "flip", "clahe", "log_contrast", "sigmoid_contrast")


def _random_angles(n: int, degrees: float, gen: torch.Generator, device) -> torch.Tensor:
    return ((torch.rand(n, generator=gen) * 2 - 1) * degrees).to(device)


def operations(cfg: AugmentationConfig) -> dict[str, Op]:
    """The five operations, each mapping a float [0, 1] batch to an augmented one."""

    def rotation(x, gen):
        return transform.rotate(x, _random_angles(x.shape[0], cfg.rotation_degrees, gen, x.device))

    def flip(x, gen):
        return transform.hflip(x) if cfg.flip == "horizontal" else transform.vflip(x)

    def clahe(x, gen):
        return enhance.equalize_clahe(x, clip_limit=cfg.clahe_clip_limit, grid_size=(cfg.clahe_grid, cfg.clahe_grid))

    def log_contrast(x, gen):
        return enhance.adjust_log(x, gain=cfg.log_gain)

    def sigmoid_contrast(x, gen):
        return enhance.adjust_sigmoid(x, cutoff=cfg.sigmoid_cutoff, gain=cfg.sigmoid_gain)

    return {"rotation": rotation, "flip": flip, "clahe": clahe, "log_contrast": log_contrast,
            "sigmoid_contrast": sigmoid_contrast}


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def expand_paper(images: torch.Tensor, labels: torch.Tensor, cfg: AugmentationConfig, seed: int,
                 chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The study's 6x expansion: originals followed by one block per operation.

    Returns uint8 images, labels, and the name of the operation that made each image.
    Processed in chunks so a large data set does not need six float copies at once.
    """
    gen = torch.Generator().manual_seed(seed)
    ops = operations(cfg)
    blocks, names = [images], ["original"] * len(images)
    for name in OPERATIONS:
        parts = [to_uint8(ops[name](to_float(images[i:i + chunk]), gen)) for i in range(0, len(images), chunk)]
        blocks.append(torch.cat(parts))
        names += [name] * len(images)
    return torch.cat(blocks), labels.repeat(len(OPERATIONS) + 1), names


def online_batch(batch: torch.Tensor, cfg: AugmentationConfig, gen: torch.Generator) -> torch.Tensor:
    """A random composition of the five operations: each applied to a random subset of the
    float [0, 1] batch with probability ``online_probability``, in a fixed order."""
    ops = operations(cfg)
    out = batch
    for name in OPERATIONS:
        chosen = torch.rand(out.shape[0], generator=gen) < cfg.online_probability  # drawn on the host: no sync
        if chosen.any():
            chosen = chosen.to(out.device)
            out = out.clone()
            out[chosen] = ops[name](out[chosen], gen)
    return out


def examples_figure(images: torch.Tensor, cfg: AugmentationConfig, seed: int, path, n: int = 3) -> None:
    """A picture like the paper's Fig 2: each row an original and its five augmentations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sample = images[: min(n, len(images))]
    gen = torch.Generator().manual_seed(seed)
    ops = operations(cfg)
    x = to_float(sample)
    columns = [("original", x)] + [(name, ops[name](x, gen)) for name in OPERATIONS]
    fig, axes = plt.subplots(len(sample), len(columns), figsize=(2 * len(columns), 2 * len(sample)), squeeze=False)
    for col, (name, batch) in enumerate(columns):
        for row in range(len(sample)):
            ax = axes[row][col]
            ax.imshow(batch[row].permute(1, 2, 0).cpu().numpy().clip(0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name.replace("_", " "), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
