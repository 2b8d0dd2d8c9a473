"""Augmentation on the training device with kornia.

``paper`` mode reproduces the study: every training image is kept once plus one copy for
each of rotation, flip, CLAHE, log contrast and sigmoid contrast (113 -> 678 images); the
copies are made batch by batch on the device (``PaperSet``), never held all at once. ``online`` mode draws a random composition of the same operations for every batch.
Both run on whatever device holds the images, so on a GPU nothing goes back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from kornia import enhance
from kornia.geometry import transform

from gistnet.config import AugmentationConfig

OPERATIONS = ("rotation", "flip", "clahe", "log_contrast", "sigmoid_contrast")


@dataclass(frozen=True)
class Operation:
    """One augmentation: ``draw`` takes its random parameters for k images from the host
    generator (None when it has none); ``apply`` maps a float [0, 1] batch and the
    parameters, already on the batch's device, to the augmented batch."""

    apply: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    draw: Callable[[int, torch.Generator], torch.Tensor | None] = lambda k, gen: None

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Augment every image of ``x``."""
        params = self.draw(x.shape[0], gen)
        return self.apply(x, None if params is None else params.to(x.device))


def operations(cfg: AugmentationConfig) -> dict[str, Operation]:
    """The five operations, each mapping a float [0, 1] batch to an augmented one."""

    def angles(k, gen):
        return (torch.rand(k, generator=gen) * 2 - 1) * cfg.rotation_degrees

    def flip(x, _):
        return transform.hflip(x) if cfg.flip == "horizontal" else transform.vflip(x)

    return {
        "rotation": Operation(lambda x, degrees: transform.rotate(x, degrees), angles),
        "flip": Operation(flip),
        "clahe": Operation(lambda x, _: enhance.equalize_clahe(x, clip_limit=cfg.clahe_clip_limit,
                                                               grid_size=(cfg.clahe_grid, cfg.clahe_grid))),
        "log_contrast": Operation(lambda x, _: enhance.adjust_log(x, gain=cfg.log_gain)),
        "sigmoid_contrast": Operation(lambda x, _: enhance.adjust_sigmoid(x, cutoff=cfg.sigmoid_cutoff,
                                                                          gain=cfg.sigmoid_gain)),
    }


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def paper_angles(n: int, degrees: float, seed: int) -> torch.Tensor:
    """The rotation angle of each of n training images in the paper's rotation block, drawn
    once from the seed: the materialized set and the on-the-fly one use the same angles."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=gen) * 2 - 1) * degrees


def paper_op(name: str, x: torch.Tensor, angles: torch.Tensor, cfg: AugmentationConfig) -> torch.Tensor:
    """One paper operation on a float [0, 1] batch; ``angles`` are the rows' rotation angles."""
    if name == "rotation":
        return transform.rotate(x, angles.to(x.device))
    return operations(cfg)[name](x, None)  # the other four draw nothing


def expand_paper(images: torch.Tensor, labels: torch.Tensor, cfg: AugmentationConfig, seed: int,
                 chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The study's 6x expansion, materialized: originals followed by one block per operation.

    Returns uint8 images, labels, and the name of the operation that made each image.
    Processed in chunks so a large data set does not need six float copies at once.
    Training uses ``PaperSet``, which makes the same images batch by batch.
    """
    angles = paper_angles(len(images), cfg.rotation_degrees, seed)
    blocks, names = [images], ["original"] * len(images)
    for name in OPERATIONS:
        parts = [to_uint8(paper_op(name, to_float(images[i:i + chunk]), angles[i:i + chunk], cfg))
                 for i in range(0, len(images), chunk)]
        blocks.append(torch.cat(parts))
        names += [name] * len(images)
    return torch.cat(blocks), labels.repeat(len(OPERATIONS) + 1), names


class PaperSet:
    """The paper's 6x training set without six copies: item k is operation ``k // n`` (0 the
    original, then ``OPERATIONS`` in order) applied to original image ``k % n``, the layout of
    ``expand_paper``, made on the device when its batch is drawn, image for image equal to it.
    Device memory holds the originals only.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, cfg: AugmentationConfig, seed: int):
        self.images, self.originals_labels, self.cfg = images, labels, cfg
        self.angles = paper_angles(len(images), cfg.rotation_degrees, seed).to(images.device)
        self.labels = labels.repeat(len(OPERATIONS) + 1)
        self._sorted = self._inverse = None
        self._counts: list[list[int]] = []
        self._batch_size = 0

    def __len__(self) -> int:
        return len(self.images) * (len(OPERATIONS) + 1)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def prepare(self, order: torch.Tensor, batch_size: int) -> None:
        """Plan an epoch from its host-side order: within each batch, items grouped by
        operation (group sizes known on the host, so no device sync per batch), and the
        permutation that puts the batch back in drawing order. Two copies to the device."""
        n, blocks = len(self.images), len(OPERATIONS) + 1
        batch_of = torch.arange(len(order)) // batch_size
        key = batch_of * blocks + order // n
        perm = torch.argsort(key, stable=True)  # batches stay in place; rows grouped by operation
        counts = torch.bincount(key, minlength=(int(batch_of[-1]) + 1) * blocks).view(-1, blocks)
        self._counts = counts.tolist()
        self._sorted = order[perm].to(self.device)
        self._inverse = (torch.argsort(perm) - batch_of * batch_size).to(self.device)
        self._batch_size = batch_size

    def batch(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Float [0, 1] images and labels of items ``order[start:stop]``, in that order."""
        n = len(self.images)
        parts, offset = [], start
        for op, count in enumerate(self._counts[start // self._batch_size]):
            if not count:
                continue
            rows = self._sorted[offset:offset + count] % n
            x = to_float(self.images[rows])
            if op:  # quantized like the materialized set
                x = to_float(to_uint8(paper_op(OPERATIONS[op - 1], x, self.angles[rows], self.cfg)))
            parts.append(x)
            offset += count
        back = self._inverse[start:stop]
        return torch.cat(parts)[back], self.originals_labels[self._sorted[start:stop] % n][back]


def online_batch(batch: torch.Tensor, cfg: AugmentationConfig, gen: torch.Generator,
                 whole_batch: bool | None = None, part: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """A random composition of the five operations: each applied to a random subset of the
    float [0, 1] batch with probability ``online_probability``, in a fixed order.

    Every random number is drawn on the host first, in the order of a per-subset loop
    (each operation's mask, then its parameters for the chosen images), and reaches the
    device in one copy; nothing on the device decides a shape, so the host never waits
    for it (no boolean index, no ``nonzero``). With ``whole_batch`` (the default on CUDA)
    each operation runs on the whole batch and ``torch.where`` keeps its result for the
    chosen images: static shapes, as CUDA graphs want. Otherwise (the default elsewhere)
    only the chosen images are gathered and written back, by indices computed on the host:
    half the arithmetic at probability 0.5, which is what counts on a CPU. Both give the
    same images.

    ``part = (r, k)``: ``batch`` is slice ``r`` of ``k`` equal slices of a global batch (rank
    ``r`` of ``k`` data-parallel processes). The parameters of the whole global batch are
    drawn and slice ``r`` of them is used, so the slices of all ranks together get exactly
    what one process draws for the global batch, and every rank's generator stays in step
    with that one process.
    """
    ops = operations(cfg)
    index, parts = part
    n = batch.shape[0]
    chosen, params = _draw_online(ops, n * parts, cfg.online_probability, gen)
    if parts > 1:
        chosen = chosen[:, index * n:(index + 1) * n].contiguous()
        params = params[:, index * n:(index + 1) * n].contiguous()
    if not chosen.any():  # a host tensor: no device sync
        return batch
    if batch.device.type == "cuda" if whole_batch is None else whole_batch:
        return _blend_whole_batch(batch, ops, chosen, params)
    return _apply_to_chosen(batch, ops, chosen, params)


def _blend_whole_batch(batch, ops, chosen, params) -> torch.Tensor:
    n = batch.shape[0]
    on_device = _to_device(torch.cat([chosen.float(), params]), batch.device)
    masks, device_params = on_device[:len(OPERATIONS)] > 0.5, on_device[len(OPERATIONS):]
    out = batch
    for i, name in enumerate(OPERATIONS):
        if chosen[i].any():
            p = device_params[PARAMETRIC.index(name)] if name in PARAMETRIC else None
            out = torch.where(masks[i].view(n, 1, 1, 1), ops[name].apply(out, p), out)
    return out


def _apply_to_chosen(batch, ops, chosen, params) -> torch.Tensor:
    counts = chosen.sum(dim=1).tolist()
    indices = chosen.nonzero()[:, 1]  # on the host; grouped by operation, in order
    values = torch.cat([params[PARAMETRIC.index(name), chosen[i]] if name in PARAMETRIC else torch.zeros(counts[i])
                        for i, name in enumerate(OPERATIONS)])
    on_device = _to_device(torch.stack([indices.float(), values]), batch.device)
    device_indices, device_values = on_device[0].long(), on_device[1]
    out, start = batch.clone(), 0
    for i, name in enumerate(OPERATIONS):
        if counts[i]:
            idx = device_indices[start:start + counts[i]]
            p = device_values[start:start + counts[i]] if name in PARAMETRIC else None
            out.index_copy_(0, idx, ops[name].apply(out.index_select(0, idx), p))
            start += counts[i]
    return out


# Operations with per-image parameters, in the row order of ``_draw_online``'s parameters.
PARAMETRIC = ("rotation",)


def _draw_online(ops: dict[str, Operation], n: int, probability: float,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Host-side draws for one online batch: a (5, n) bool mask and a (len(PARAMETRIC), n)
    float table of parameters (zero where an image is not chosen)."""
    chosen = torch.zeros(len(OPERATIONS), n, dtype=torch.bool)
    params = torch.zeros(len(PARAMETRIC), n)
    for i, name in enumerate(OPERATIONS):
        chosen[i] = torch.rand(n, generator=gen) < probability
        k = int(chosen[i].sum())
        drawn = ops[name].draw(k, gen) if k else None
        if drawn is not None:
            params[PARAMETRIC.index(name), chosen[i]] = drawn.float()
    return chosen, params


def _to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device without blocking the host: from pinned memory on CUDA."""
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


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
            ax.imshow(batch[row].expand(3, -1, -1).permute(1, 2, 0).cpu().numpy().clip(0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name.replace("_", " "), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
