"""One (fold, model) unit, trained top-down: the fold's data, then each of its units' training,
checkpointing, evaluation on the fold's validation part and ``result.json``, written last.

Everything a unit needs comes from the run's ``RunContext``; nothing here calls back into
the pipeline. The layout of units in the store is ``data/runs.py``; pooling finished units
into the report is ``evidence/aggregate.py``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from gistnet.config import Config, replace
from gistnet.data import augmentation, dataset, split
from gistnet.data.runs import RESULT, Unit, gradcam_key, is_finished
from gistnet.data.split import Split
from gistnet.data.storage import open_store
from gistnet.errors import ConfigError, GistnetError, LeaseHeld
from gistnet.evidence import evaluate, explain, predictions
from gistnet.training import checkpoint, distributed, lease, train
from gistnet.training import compile as compiling
from gistnet.observe.observers import Observers
from gistnet.observe.tracking import Tracker
from gistnet.training.context import RunContext

log = logging.getLogger(__name__)


@dataclass
class FoldData:
    """One fold's images: originals of both parts, and the (augmented) training tensors."""

    part: Split
    train_set: dataset.ImageSet
    val_set: dataset.ImageSet
    tensors: train.TrainData
    train_sources: list[str]  # the original image behind each training row, augmented copies included


def prepare_fold(images: dataset.ImageSet, part: Split, config: Config) -> FoldData:
    """Subset the images; the training part alone feeds augmentation (paper mode: the 6x set
    drawn batch by batch from the training originals, ``augmentation.PaperSet``)."""
    train_set, val_set = images.subset(part.train), images.subset(part.val)
    drawn_from = None
    if config.augmentation.mode == "paper":
        drawn_from = augmentation.PaperSet(train_set.images, train_set.labels, config.augmentation, config.train.seed)
    tensors = train.TrainData(train_set.images, train_set.labels, val_set.images, val_set.labels, drawn_from)
    return FoldData(part, train_set, val_set, tensors, list(train_set.keys))


def train_fold(ctx: RunContext, fold_index: int | None, units: list[Unit], plan: split.Plan,
               full_set: list[dataset.ImageSet], last: bool) -> None:
    """Train the ``units`` of one fold that have not finished yet, on that fold's training part only.
    The ``last`` fold takes the full image set out of ``full_set`` and drops it once split, so
    only the split's tensors stay on the device while training."""
    config, out = ctx.config, ctx.out
    todo = [u for u in units if not is_finished(out, u)]
    for unit in units:
        if unit not in todo:
            log.info("%s: already trained in this run; reusing %s", unit.name(), out.uri_of(unit.key(RESULT)))
    if not todo:
        return
    images = full_set.pop() if last else full_set[0]
    with ctx.timed("augmentation"), ctx.guard("augmentation"):
        fold = prepare_fold(images, plan.part(fold_index), config)
        del images
        # explain.gallery: false shows no pixels at all; nor does a data set whose masks are not all known
        if ctx.world.is_main and config.explain.gallery and not _withheld(fold.train_set):
            _examples_figure(ctx, fold, todo[0].prefix)
    log.info("%s: train %s, validation %s", "hold-out" if fold_index is None else f"fold {fold_index}",
             fold.train_set.counts(ctx.head_classes), fold.val_set.counts(ctx.head_classes))
    batch = distributed.per_rank_batch(config.train.batch_size, ctx.world, config.distributed.scale_batch)
    train.check_trainable(len(fold.tensors.train_set), batch * ctx.world.size,
                          f"the training set{'' if fold_index is None else f' of fold {fold_index}'} after "
                          f"{config.augmentation.mode!r} augmentation")
    preprocess = train.Preprocess(fold.tensors.train_images.device)
    tracker = ctx.tracker or Tracker(config.tracking, active=False)
    for unit in todo:
        ctx.stop_if_asked(f"before training {unit.name()}")
        tracked = tracker.unit(unit.name(), unit.model, unit.fold)
        train_unit(ctx, unit, fold, preprocess, batch, Observers(ctx.metrics, tracked))  # Prometheus and MLflow
        tracked.finished()


def train_unit(ctx: RunContext, unit: Unit, fold: FoldData, preprocess: train.Preprocess,
               per_rank_batch: int, observer=None) -> dict | None:
    """``_train_unit`` while this process holds the unit's lease (``training/lease.py``; under
    torchrun rank 0 holds it for the group); a unit another process finished meanwhile is not
    trained again. Under torchrun rank 0 alone takes the lease, then tells every rank what it
    found (``decide``) before any of them reads a checkpoint: all stop if the lease is held or
    the unit finished meanwhile, and all resume from the pointer rank 0 read under the lease."""
    out, world = ctx.out, ctx.world
    store = unit.store(out)
    fence = (store, checkpoint.pointer_key(unit.model))  # claimed, then written under the lease's generation
    with contextlib.ExitStack() as stack:
        held, decision, error = None, None, None
        if world.is_main:
            try:
                held = stack.enter_context(lease.hold(out, unit.key(lease.LEASE), ctx.config.output.lease_ttl_s,
                                                      unit.name(), enabled=True, fence=fence))
                decision = {"finished": is_finished(out, unit), "pointer": checkpoint.read_pointer(store, unit.model)}
            except GistnetError as exc:
                error = exc
                decision = {"error": str(exc), "kind": type(exc).__name__, "exit_code": exc.exit_code}
        decision = distributed.broadcast(decision, world)
        if "error" in decision:
            if error is not None:
                raise error
            raise _error_of_rank_0(decision)
        if decision["finished"]:
            log.info("%s: finished by another process meanwhile; reusing %s", unit.name(), out.uri_of(unit.key(RESULT)))
            return json.loads(out.read(unit.key(RESULT))) if world.is_main else None
        return _train_unit(ctx, unit, fold, preprocess, per_rank_batch, observer or ctx.metrics, held,
                           decision["pointer"])


def _error_of_rank_0(decision: dict) -> GistnetError:
    """On a rank other than 0: the error rank 0 met while taking the unit's lease, with its exit code."""
    leased = decision["kind"] in ("LeaseHeld", "Fenced")
    error = LeaseHeld(decision["error"]) if leased else GistnetError(decision["error"])
    error.exit_code = decision["exit_code"]
    return error


def _train_unit(ctx: RunContext, unit: Unit, fold: FoldData, preprocess: train.Preprocess,
                per_rank_batch: int, observer, held: lease.Lease | None = None,
                pointer: dict | None = None) -> dict | None:
    """Train (every rank), then evaluate and store one (fold, model) (rank 0; the others
    return None); ``result.json`` is written last. Under the lease ``held`` nothing is written
    once it is lost, and the pointer and ``result.json`` are fenced by its generation."""
    config, out, world = ctx.config, ctx.out, ctx.world
    store, name, data = unit.store(out), unit.model, fold.tensors
    train_cfg = replace(config, train={"learning_rate": distributed.learning_rate(
        config.train.learning_rate, world, config.distributed.scale_batch)}).train
    init_weights = local_weights(config.train.init_weights.get(name), config, ctx.scratch)
    state = train.new_state(name, train_cfg, data.train_images.device, init_weights, len(ctx.head_classes))
    state.provenance = {"split": fold.part.to_dict(), "augmentation_mode": config.augmentation.mode,
                        "augmentation_seed": config.train.seed}
    checkpoint.load_latest(store, name, state, ctx.scratch, pointer)
    ctx.metrics.model_started(name, config.train.epochs)
    if state.resumed_from_epoch is not None:
        ctx.metrics.epoch.labels(model=name).set(state.epoch)
    after_epoch = None
    if not world.distributed:  # DDP steps eager: a compiled twin of the bare model would skip its gradient sync
        cache_store = open_store(config.output.uri, config.storage) if config.train.compile_cache else None
        after_epoch = compiling.attach(state, name, config.train.compile, config.train.batch_size,
                                       config.data.image_size, data.train_images.device, cache_store)
    fit = functools.partial(_fit, ctx, name, state, data, train_cfg, preprocess, per_rank_batch, after_epoch, observer)
    if not world.is_main:  # trains in step with rank 0, which alone checkpoints, evaluates and writes
        with ctx.guard(f"{name} training"):
            fit(save_checkpoint=None)
        return None
    check = held.check if held is not None else (lambda: None)
    with checkpoint.CheckpointWriter(store, name, ctx.scratch, fence=held) as writer:
        with ctx.guard(f"{name} training"):
            fit(save_checkpoint=writer.save)
        with ctx.timed("upload", name):
            if state.resumed_from_epoch != state.epoch:
                writer.save(state)
            pointer = writer.wait() or checkpoint.read_pointer(store, name)
            check()
            weights = checkpoint.save_weights(store, name, state.model, ctx.scratch, len(ctx.head_classes))
    with ctx.timed("evaluate", name), ctx.guard(f"{name} evaluation"):
        scored = evaluate.predict(state.model, data.val_images, data.val_labels, config.train.batch_size, preprocess)
        on_train = evaluate.predict(state.model, fold.train_set.images, fold.train_set.labels,
                                    config.train.batch_size, preprocess)
    rows = predictions.rows(fold.val_set.keys, fold.val_set.patient_ids, data.val_labels.cpu().numpy(),
                            ctx.class_names, unit.fold, name, scored.probabilities.float().cpu().numpy(),
                            scored.margins.double().cpu().numpy(), scored.logits.cpu().numpy(), ctx.head_classes,
                            fold.val_set.lesion_ids)
    check()
    predictions.write(out, rows, unit.key(predictions.FILENAME))
    names = ctx.head_classes
    result = {
        "fold": unit.fold, "model": name, "history": state.history, "checkpoint": weights,
        "resumable_checkpoint": {"uri": store.uri_of(pointer["key"]), "sha256": pointer["sha256"],
                                 "bytes": pointer["bytes"], "epoch": pointer["epoch"]},
        "resumed_from_epoch": state.resumed_from_epoch,
        # Youden's threshold on this fold's own (unaugmented) training images: never tuned on validation.
        "youden_threshold": evaluate.youden_threshold(evaluate.endpoint_labels(fold.train_set.labels,
                                                                              len(names)), on_train.probabilities),
        "counts": {"train": fold.train_set.counts(names), "val": fold.val_set.counts(names),
                   "train_augmented": dataset.class_counts(data.train_set.labels, names)},
        "environment": ctx.environment,
    }
    # the sanity check is computed with the gallery
    if config.explain.enabled and config.explain.gallery and not _withheld(fold.val_set):
        with ctx.timed("explain", name), ctx.guard(f"{name} Grad-CAM"):
            result["explain"] = _explain(ctx, unit, state.model, data, scored.probabilities, preprocess)
    result["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if held is None:
        ctx.out.write_bytes(unit.key(RESULT), json.dumps(result).encode())
    else:
        held.write_once_fenced(ctx.out, unit.key(RESULT), result)
    return result


def _withheld(images: dataset.ImageSet) -> bool:
    """Whether figures of these images are withheld (``region.withheld``), logged once per call."""
    if images.withheld:
        log.warning("figures withheld: %s", images.withheld)
    return bool(images.withheld)


def _explain(ctx: RunContext, unit: Unit, model, data: train.TrainData, probabilities, preprocess) -> dict:
    """Grad-CAM gallery of the unit's validation images (uploaded as ``<prefix>gradcam-<model>.png``)
    and its sanity check."""
    config = ctx.config
    return ctx.out.upload_drawn(gradcam_key(unit), lambda path: explain.explain(
        unit.model, model, data.val_images, evaluate.endpoint_labels(data.val_labels, len(ctx.head_classes)),
        probabilities, preprocess, config.train.batch_size, config.data.endpoint_classes, config.explain.max_misclassified,
        config.explain.correct_per_class, config.train.seed, path), ctx.scratch)


def _fit(ctx: RunContext, name: str, state: train.TrainState, data: train.TrainData, train_cfg,
         preprocess: train.Preprocess, per_rank_batch: int, after_epoch, observer, save_checkpoint) -> None:
    """Train one model, timing checkpoint saves as the ``checkpoint`` stage (what training waits
    for: serializing, and an upload still in flight) and the rest as ``train``. Under torchrun
    the ranks other than 0 pass ``save_checkpoint=None``: they write nothing."""
    online = ctx.config.augmentation if ctx.config.augmentation.mode == "online" else None
    checkpoint_seconds = 0.0

    def save(s: train.TrainState, durable: bool = False) -> None:
        nonlocal checkpoint_seconds
        if save_checkpoint is None:
            return
        start = time.perf_counter()
        with ctx.timed("checkpoint", name):
            save_checkpoint(s, durable=durable)
        checkpoint_seconds += time.perf_counter() - start

    start = time.perf_counter()
    try:
        train.fit(name, state, data, train_cfg, preprocess, online, observer, ctx.stop, save, world=ctx.world,
                  per_rank_batch=per_rank_batch, after_epoch=after_epoch)
    finally:
        ctx.metrics.stage("train", time.perf_counter() - start - checkpoint_seconds, name)


def _examples_figure(ctx: RunContext, fold: FoldData, prefix: str) -> None:
    """Fig 2: originals of this fold's training part and their five augmentations."""
    ctx.out.upload_drawn(f"{prefix}augmentation_examples.png", lambda path: augmentation.examples_figure(
        fold.train_set.images, ctx.config.augmentation, ctx.config.train.seed, path), ctx.scratch)


def local_weights(uri: str | None, config: Config, scratch: str) -> str | None:
    """Initial weights as a local file; an s3:// object is downloaded to scratch first."""
    if not uri:
        return None
    if not uri.startswith("s3://"):
        if not Path(uri).is_file():
            raise ConfigError(f"train.init_weights: {uri} does not exist")
        return uri
    parent, _, key = uri.rpartition("/")
    suffix = ".safetensors" if key.endswith(".safetensors") else ".pt"
    local = Path(tempfile.mkdtemp(dir=scratch)) / f"init{suffix}"  # never a path built from the key
    open_store(parent, config.storage).download_file(key, local)
    return str(local)
