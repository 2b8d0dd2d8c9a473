"""Training: torchvision ResNets, one epoch at a time, validated every epoch.

Optimizer: AdamW (lr 1e-3, weight decay 1e-4) with cosine annealing over the run. The
paper does not name its optimizer; AdamW is the common default for training from scratch
without per-data-set tuning (no comparison with SGD on this task has been run), and the
cosine schedule ends the run at a small learning rate so the final weights are stable.
SGD with momentum is available (``train.optimizer: sgd``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from gistnet.data import augmentation
from gistnet.training import distributed, stopping
from gistnet.training.stopping import StopFlag  # re-exported: train.StopFlag, as callers know it
from gistnet.evidence import evaluate
from gistnet.training import compile as compiling
from gistnet.config import AugmentationConfig, TrainConfig
from gistnet import models
from gistnet.models import load_state_dict_file  # noqa: F401 - kept importable from here
from gistnet.errors import ConfigError, DataError, DivergedError
from gistnet.training.device import (cuda_rng_state, out_of_memory_is_a_device_error, resolve_device,  # noqa: F401
                                     restore_cuda_rng_state, set_determinism, threads_hint)

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """uint8 [0, 255] or float [0, 1] images on the device -> normalized float input, like
    torchvision's presets, as one multiply-add: ``x * scale + bias``.

    The constants are built once per device and kept there: building them per call would
    be a blocking host-to-device copy on every step.
    """

    device: torch.device
    _constants: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._on(torch.device(self.device))

    def _on(self, device: torch.device) -> dict[str, torch.Tensor]:
        constants = self._constants.get(device)
        if constants is None:
            mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
            constants = {"scale": (1 / std).float().to(device), "scale_uint8": (1 / (255 * std)).float().to(device),
                         "bias": (-mean / std).float().to(device)}
            self._constants[device] = self._constants[constants["bias"].device] = constants  # "cuda" and "cuda:0"
        return constants

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        c = self._on(images.device)  # a 1-channel (grayscale) batch broadcasts to three channels here
        if images.dtype == torch.uint8:
            x = torch.addcmul(c["bias"], images.float(), c["scale_uint8"])
        else:
            x = torch.addcmul(c["bias"], images, c["scale"])
        if images.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def build_model(name: str, init_weights: str | None = None, num_classes: int = 2) -> torch.nn.Module:
    """Training's call of the one model factory (``models.build_model``), kept under its old name."""
    return models.build_model(name, init_weights=init_weights, num_classes=num_classes)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig):
    fused = compiling.fused_optimizer_kwargs(model)  # fused kernels on CUDA
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay, **fused)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay, **fused)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)


class Observer(Protocol):
    def on_step(self, model_name: str, images: int) -> None: ...

    def on_epoch(self, model_name: str, record: dict, total_epochs: int) -> None: ...


class NullObserver:
    def on_step(self, model_name, images):
        pass

    def on_epoch(self, model_name, record, total_epochs):
        pass


class TensorSet:
    """Training images held as they are; ``batch`` gives float [0, 1] images and labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels
        self._order = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def prepare(self, order: torch.Tensor, batch_size: int) -> None:
        self._order = order.to(self.device)  # one copy per epoch

    def batch(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._order[start:stop]
        return self.images[idx].float() / 255.0, self.labels[idx]


@dataclass
class TrainData:
    """Training and validation tensors on the device. ``train_set`` is what an epoch draws
    from: the images as they are, or the paper's 6x set made on the fly (``PaperSet``)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    train_set: "TensorSet | augmentation.PaperSet | None" = None

    def __post_init__(self) -> None:
        if self.train_set is None:
            self.train_set = TensorSet(self.train_images, self.train_labels)


@dataclass
class TrainState:
    """Everything needed to continue a run exactly where it stopped."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    resumed_from_epoch: int | None = None
    # What the run was computed on (the split, the augmented set's seed): checked on resume.
    provenance: dict = field(default_factory=dict)
    # The training forward: the model, or its compiled twin (compile.attach); same parameters.
    forward: Callable | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda_rng_state(self.device),
            "epoch": self.epoch,
            "history": self.history,
            "provenance": self.provenance,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("provenance") != self.provenance:
            raise ConfigError("the checkpoint was made with another split or augmentation seed; "
                              "use a new --run-id, or --force to start the run over")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        restore_cuda_rng_state(state.get("cuda_rng"), self.device)
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.resumed_from_epoch = self.epoch


def new_state(name: str, cfg: TrainConfig, device: torch.device, init_weights: str | None,
              num_classes: int = 2) -> TrainState:
    torch.manual_seed(cfg.seed)  # the same initial weights for a given seed, whatever ran before
    model = build_model(name, init_weights, num_classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = make_optimizer(model, cfg)
    return TrainState(model, optimizer, scheduler, torch.Generator().manual_seed(cfg.seed))


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_trainable(n_train: int, batch_size: int, what: str = "the training set") -> None:
    """Every step is a full batch; a training set smaller than one batch would train nothing."""
    if n_train < batch_size:
        raise DataError(f"{what} has {n_train} images, fewer than one batch of train.batch_size={batch_size}: "
                        "no training step could run; lower train.batch_size or add images")


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Full batches only: the last partial batch is dropped (like DataLoader's drop_last)."""
    return n_train // batch_size


def train_one_epoch(state: TrainState, data: TrainData, batch_size: int, preprocess: Preprocess,
                    aug_cfg: AugmentationConfig | None, on_step: Callable[[int], None],
                    world: distributed.World = distributed.SINGLE,
                    model: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One pass over the training set in full batches: the order is reshuffled every epoch and
    the last ``n % (batch_size x processes)`` images of it are left out, so each epoch drops
    different images, BatchNorm never sees a batch of one and every step has the same shape.
    Under torchrun ``batch_size`` is this process's share and it trains on its slice of each
    global batch, augmented per rank (``distributed.epoch_batches``); ``model`` is what to call (the DDP wrapper).
    Loss and correct counts stay on the device (no per-step host sync); the caller reads them
    once per epoch."""
    model, device = model or state.model, data.train_images.device
    # The compiled twin (compile.attach) only without DDP: it would bypass the wrapper's gradient sync.
    forward = model if state.forward is None or world.distributed else state.forward
    model.train()
    n = len(data.train_set)
    global_batch = batch_size * world.size
    check_trainable(n, global_batch)
    order = torch.randperm(n, generator=state.generator)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    steps = steps_per_epoch(n, global_batch)
    for x, y in distributed.epoch_batches(data.train_set, order, batch_size, world, aug_cfg, state.generator):
        with _autocast(device):
            logits = forward(preprocess(x))
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        loss_sum += loss.detach() * batch_size
        correct += (logits.detach().argmax(1) == y).sum()
        on_step(batch_size)
    return loss_sum, correct, steps * batch_size


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock time covers it (once per epoch, not per step)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sum_over_ranks(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, stop: StopFlag,
                    world: distributed.World) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """The epoch's training counters of all ranks, and whether any rank was asked to stop, in
    one all-reduce: every rank gets the same answer, so they all stop after the same epoch."""
    counters = torch.stack([loss_sum, correct.float(), torch.tensor(float(seen), device=loss_sum.device)])
    totals, stopping = distributed.sum_and_stop(counters, stop.is_set(), world)
    if stopping and not stop.is_set():
        stop.set("SIGTERM on another rank")
    return totals[0], totals[1], int(totals[2].item()), stopping


def fit(name: str, state: TrainState, data: TrainData, cfg: TrainConfig, preprocess: Preprocess,
        aug_cfg: AugmentationConfig | None, observer: Observer, stop: StopFlag,
        save_checkpoint: Callable[[TrainState], None], clock: Callable[[], float] = time.monotonic,
        world: distributed.World = distributed.SINGLE, per_rank_batch: int | None = None,
        after_epoch: Callable[[TrainState], None] | None = None) -> TrainState:
    """Train until ``cfg.epochs``, validating every epoch; checkpoint every
    ``cfg.checkpoint_every`` epochs, after ``cfg.checkpoint_interval_s`` seconds since the
    last one (checked between epochs), and on SIGTERM (then raise ``Interrupted``).

    Under torchrun every rank runs this loop in step: DDP averages the gradients, one
    all-reduce per epoch sums the training counters and the stop flags, so a SIGTERM on any
    rank stops them all after the same epoch (only rank 0's ``save_checkpoint`` writes).
    ``after_epoch`` runs after each epoch's record (e.g. writing the compile cache)."""
    device = data.train_images.device
    batch = per_rank_batch or cfg.batch_size
    check_trainable(len(data.train_set), batch * world.size)
    net = distributed.wrap(state.model, world, device, cfg.sync_batchnorm)
    last_saved = clock()
    while state.epoch < cfg.epochs:
        started = time.perf_counter()
        loss_sum, correct, seen = train_one_epoch(state, data, batch, preprocess, aug_cfg,
                                                  lambda k: observer.on_step(name, k), world, net)
        agreed_stop = None
        if world.distributed:
            loss_sum, correct, seen, agreed_stop = _sum_over_ranks(loss_sum, correct, seen, stop, world)
        _synchronize(device)
        train_seconds = time.perf_counter() - started
        state.scheduler.step()
        # fp32, exactly like the final evaluation, so the last epoch's val_accuracy is the
        # report's: bf16 rounds the logits to 8 bits of mantissa, which moves images near the
        # threshold and ties scores; the validation set is small, fp32 costs next to nothing.
        val = evaluate.predict(state.model, data.val_images, data.val_labels, cfg.batch_size, preprocess)
        val_correct = val.correct(data.val_labels).sum()
        # One host sync per epoch, for all the numbers at once.
        train_loss, train_correct, val_loss, val_ok = torch.stack(
            [loss_sum, correct.float(), val.loss_sum, val_correct.float()]).tolist()
        state.epoch += 1
        train_loss /= seen  # seen >= one batch: check_trainable guarantees it
        if not math.isfinite(train_loss) or not math.isfinite(val_loss):
            raise DivergedError(f"{name}: non-finite loss at epoch {state.epoch} (train {train_loss}, val {val_loss}); "
                                "lower train.learning_rate or check the input images")
        record = {"epoch": state.epoch, "train_loss": train_loss, "train_accuracy": train_correct / seen,
                  "val_loss": val_loss / len(data.val_labels), "val_accuracy": val_ok / len(data.val_labels),
                  "learning_rate": state.optimizer.param_groups[0]["lr"], "images": seen,
                  "train_seconds": train_seconds, "seconds": time.perf_counter() - started}
        state.history.append(record)
        observer.on_epoch(name, record, cfg.epochs)
        if after_epoch:
            after_epoch(state)
        log.info("%s epoch %d/%d  train loss %.4f acc %.3f (%d images)  val loss %.4f acc %.3f  (%.1fs)", name,
                 state.epoch, cfg.epochs, record["train_loss"], record["train_accuracy"], seen, record["val_loss"],
                 record["val_accuracy"], record["seconds"])
        log.debug("%s epoch %d: learning rate %.3g, %d steps of %d, training %.2fs, validation %.2fs (%d images)",
                  name, state.epoch, record["learning_rate"], steps_per_epoch(len(data.train_set), batch * world.size),
                  batch * world.size, train_seconds, record["seconds"] - train_seconds, len(data.val_labels))
        if stop.is_set() if agreed_stop is None else agreed_stop:
            stopping.stop_with_checkpoint(name, state, cfg.epochs, save_checkpoint, stop, world, device)
        if state.epoch < cfg.epochs and checkpoint_due(cfg, state.epoch, clock() - last_saved):
            save_checkpoint(state)
            last_saved = clock()
    return state


def checkpoint_due(cfg: TrainConfig, epoch: int, seconds_since_last: float) -> bool:
    """Every ``checkpoint_every`` epochs, or once ``checkpoint_interval_s`` has passed."""
    by_epoch = cfg.checkpoint_every > 0 and epoch % cfg.checkpoint_every == 0
    by_time = cfg.checkpoint_interval_s > 0 and seconds_since_last >= cfg.checkpoint_interval_s
    return by_epoch or by_time
