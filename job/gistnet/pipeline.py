"""One training run, stage by stage:
storage -> dataset -> augmentation -> train -> evaluate -> report -> storage.

Each stage lives in its own module; this file only orders them, times them for the
metrics, and makes re-running a run id safe: a finished run is a no-op, an interrupted
one resumes from its newest complete checkpoint with the same split.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

from gistnet.data import augmentation
from gistnet.training import units as crossval
from gistnet.data import dataset
from gistnet.data import lineage
from gistnet.training import distributed
from gistnet.evidence import report
from gistnet.data import split
from gistnet.training import train
from gistnet.config import Config, load_saved
from gistnet.errors import ConfigError, DataError, GistnetError, Interrupted
from gistnet.observe.metrics import RunMetrics
from gistnet.observe.observers import Observers
from gistnet.observe.tracking import Tracker
from gistnet.ops import record
from gistnet.data.storage import Store, TransferStats, open_store, redact

log = logging.getLogger(__name__)

# Config sections that change what a run computes; resuming with different ones is refused.
RESULT_SECTIONS = ("data", "split", "augmentation", "train", "evaluate")
# Keys in those sections that only change how it runs; they may differ on resume.
OPERATIONAL_KEYS = {("data", "download_threads"), ("train", "device"), ("train", "checkpoint_every"),
                    ("train", "checkpoint_interval_s"),
                    ("train", "compile"), ("train", "compile_cache")}


@dataclass
class RunOutcome:
    run_id: str
    uri: str
    report: dict | None
    already_complete: bool = False


def default_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def run(config: Config, stop: train.StopFlag | None = None, scratch: str | None = None,
        fold: str | None = None, model: str | None = None) -> RunOutcome:
    """Run the job (every (fold, model) unit, or those ``fold`` and ``model`` select:
    ``crossval.select``); push the outcome to the Pushgateway whatever happens."""
    world = distributed.world_from_env()
    run_id = config.output.run_id or default_run_id()
    if world.distributed and not config.output.run_id:
        raise ConfigError("under torchrun every process needs the same run id: pass --run-id")
    stats = TransferStats()
    metrics = RunMetrics(stats)
    exit_code = 1
    stop = stop or train.StopFlag()
    try:
        metrics.serve(distributed.metrics_port(config.metrics.port, world),
                      labels={"rank": str(world.rank)} if world.distributed else None)
        with stop.installed():  # SIGTERM from here on checkpoints and exits with code 8
            outcome = _run(config, run_id, stats, metrics, stop, scratch or tempfile.gettempdir(), world, fold,
                               model)
        exit_code = 0
        return outcome
    except GistnetError as exc:
        exit_code = exc.exit_code
        raise
    except KeyboardInterrupt:
        exit_code = 130
        raise
    finally:
        metrics.run_ended(exit_code)
        if world.is_main:
            metrics.push(config.metrics.pushgateway, config.metrics.job_name, config.metrics.grouping_labels,
                         succeeded=exit_code == 0)
        metrics.close()


def _check_same_config(out: Store, config: Config) -> None:
    try:
        saved = yaml.safe_load(out.read("config.yaml"))
    except FileNotFoundError:
        return
    current = config.to_dict()

    def result_keys(section: str, values: dict | None) -> dict:
        return {k: v for k, v in (values or {}).items() if (section, k) not in OPERATIONAL_KEYS}

    changed = [s for s in RESULT_SECTIONS if result_keys(s, saved.get(s)) != result_keys(s, current[s])]
    if changed:
        raise ConfigError(f"run {out.uri} exists with a different configuration ({', '.join(changed)}); "
                          "use a new --run-id, or --force to start it over")


def _read_json(store: Store, key: str) -> dict | None:
    try:
        return json.loads(store.read(key))
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _timed(metrics: RunMetrics, name: str, model: str = ""):
    """Add the wall time of a stage (or a piece of one) that completed to the metrics."""
    start = time.perf_counter()
    yield
    metrics.stage(name, time.perf_counter() - start, model)


def _run(config: Config, run_id: str, stats: TransferStats, metrics: RunMetrics, stop: train.StopFlag,
         scratch: str, world: distributed.World = distributed.SINGLE, fold: str | None = None,
         model: str | None = None) -> RunOutcome:
    selected = crossval.select(fold, model, config)  # a bad --fold/--model is refused before anything is written
    device = distributed.device_for(world, train.resolve_device(config.train.device))
    train.set_determinism(config.train.deterministic, device)
    distributed.per_rank_batch(config.train.batch_size, world, config.distributed.scale_batch)  # fail early
    with distributed.process_group(world, device, config.distributed.timeout_s):
        return _run_stages(config, run_id, stats, metrics, stop, scratch, world, device, selected)


def _run_stages(config: Config, run_id: str, stats: TransferStats, metrics: RunMetrics, stop: train.StopFlag,
                scratch: str, world: distributed.World, device: torch.device,
                selected: list[crossval.Unit]) -> RunOutcome:
    """The stages in order, for the ``selected`` units this process trains. Under torchrun every rank loads the data and trains; only rank 0
    writes, and the others wait for what it wrote before reading it (barriers)."""
    metrics.run_started(run_id, device.type)
    threads = config.data.download_threads
    data_store = open_store(config.data.uri, config.storage, threads, stats)
    out = open_store(config.output.uri, config.storage, threads, stats).child(run_id)
    done = complete_report(out)
    if done is not None and not config.output.force:
        log.info("run %s is already complete (%s); nothing to do (use --force to run it again)",
                 run_id, out.uri_of("report.json"))
        return RunOutcome(run_id, out.uri, done, already_complete=True)
    log.info("run %s: data %s -> outputs %s (device %s)", run_id, redact(data_store.uri), out.uri, device)
    loaded = dataset.load_images(data_store, config.data, device,
                                 on_stage=lambda name, seconds, n: metrics.stage(name, seconds))
    metrics.skipped.set(len(loaded.skipped))
    names = (config.data.positive_class, config.data.negative_class)
    if world.is_main:  # rank 0 plans (an impossible split is refused before anything is written) and writes
        plan = _plan(out, loaded.images, config, fresh=config.output.force)
        _prepare_output(out, config, selected)
        used = lineage.settle(out, loaded.lineage, fresh=config.output.force)  # a resume on changed data: exit 4
        _write_once(out, "split.json", plan.to_dict())
        _write_once(out, crossval.DATASET, {
            "uri": redact(data_store.uri), "classes": {names[0]: "positive", names[1]: "negative"},
            "images": loaded.images.counts(names), "augmentation_mode": config.augmentation.mode,
            "split_method": plan.parts[0].method, "skipped": loaded.skipped,
            "lineage": used.summary(lineage.name_of(redact(data_store.uri)), redact(data_store.uri))})
    tracker = Tracker(config.tracking, active=world.is_main)  # under torchrun rank 0 logs
    if world.is_main:
        tracker.start(run_id, config.to_dict(), used.summary(lineage.name_of(redact(data_store.uri)),
                                                             redact(data_store.uri)))
    distributed.barrier(world)
    if not world.is_main:  # the others read what rank 0 saved
        plan = _plan(out, loaded.images, config, fresh=False)
    _stop_if_asked(stop, "after loading the data", world, device)

    environment = report.environment(device)
    folds = list(dict.fromkeys(u.fold for u in selected))  # in order, each prepared once
    full_set = [loaded.images]  # the last fold takes it out, so the full set is freed once split
    del loaded
    for n, fold_index in enumerate(folds):
        _train_fold(fold_index, [u for u in selected if u.fold == fold_index], plan, full_set, n == len(folds) - 1,
                    config, out, metrics, stop, scratch, environment, world, tracker)
    if not world.is_main:
        log.info("rank %d done; rank 0 writes the report", world.rank)
        return RunOutcome(run_id, out.uri, None)

    pending = [u for u in crossval.all_units(config) if not crossval.is_finished(out, u)]
    if pending:
        log.info("this process's units are done; waiting for %s; the last one to finish writes the report "
                 "(or run: gistnet aggregate --run %s)", ", ".join(u.name() for u in pending), out.uri)
        return RunOutcome(run_id, out.uri, None)
    with _timed(metrics, "report"):
        final = crossval.aggregate(out, config, run_id, scratch)
        final = record.finish(tracker, out, final, config, scratch)
    for name, m in final["models"].items():
        metrics.model_evaluated(name, m["metrics"])
    log.info("report: %s", out.uri_of("report.json"))
    if config.promotion.registry and final["status"] == "complete":  # the one process that wrote the report
        from gistnet.ops import promotion

        promotion.gate(out.uri, config.promotion.registry, config, scratch)  # refused: exit 10
    return RunOutcome(run_id, out.uri, final)


def complete_report(out: Store) -> dict | None:
    """The run's report if it is complete (a partial one from ``aggregate`` does not count)."""
    rep = _read_json(out, "report.json")
    return rep if rep is not None and rep.get("status") == "complete" else None


def _out_of_memory_guard(stage: str, config: Config):
    return train.out_of_memory_is_a_device_error(stage, config.train.batch_size, config.data.image_size)


def _train_fold(fold_index: int | None, units: list[crossval.Unit], plan: split.Plan,
                full_set: list[dataset.ImageSet], last: bool, config: Config, out: Store, metrics: RunMetrics,
                stop: train.StopFlag, scratch: str, environment: dict,
                world: distributed.World = distributed.SINGLE, tracker: Tracker | None = None) -> None:
    """Train the ``units`` of one fold that have not finished yet, on that fold's training part only.
    The ``last`` fold takes the full image set out of ``full_set`` and drops it once split, so
    only the split's tensors stay on the device while training."""
    todo = [u for u in units if not crossval.is_finished(out, u)]
    for unit in units:
        if unit not in todo:
            log.info("%s: already trained in this run; reusing %s", unit.name(), out.uri_of(unit.key("result.json")))
    if not todo:
        return
    part = plan.part(fold_index)
    images = full_set.pop() if last else full_set[0]
    device = images.images.device
    with _timed(metrics, "augmentation"), _out_of_memory_guard("augmentation", config):
        fold = crossval.prepare_fold(images, part, config)
        del images
        if world.is_main:
            _examples_figure(fold, config, out, todo[0].prefix, scratch)
    names = (config.data.positive_class, config.data.negative_class)
    log.info("%s: train %s, validation %s", "hold-out" if fold_index is None else f"fold {fold_index}",
             fold.train_set.counts(names), fold.val_set.counts(names))
    batch = distributed.per_rank_batch(config.train.batch_size, world, config.distributed.scale_batch)
    train.check_trainable(len(fold.tensors.train_set), batch * world.size,
                          f"the training set{'' if fold_index is None else f' of fold {fold_index}'} after "
                          f"{config.augmentation.mode!r} augmentation")
    preprocess = train.Preprocess(device)
    online = config.augmentation if config.augmentation.mode == "online" else None
    for unit in todo:
        _stop_if_asked(stop, f"before training {unit.name()}", world, device)
        tracked = (tracker or Tracker(config.tracking, active=False)).unit(unit.name(), unit.model, unit.fold)
        observer = Observers(metrics, tracked)  # Prometheus and MLflow hear every step and epoch
        crossval.train_unit(
            unit, fold, config, out, init_weights=_local_weights(config.train.init_weights.get(unit.model), config,
                                                                 scratch),
            preprocess=preprocess, observer=metrics, scratch=scratch, environment=environment, world=world,
            timed=lambda stage, model: _timed(metrics, stage, model),
            guard=lambda stage: _out_of_memory_guard(stage, config),
            fit=lambda name, state, train_cfg, save, after_epoch: _fit_timed(
                name, state, fold.tensors, batch, train_cfg, preprocess, online, metrics, stop, save, world,
                after_epoch, observer))
        tracked.finished()


def _prepare_output(out: Store, config: Config, selected: list[crossval.Unit]) -> None:
    """Start over (--force: the selected units, and the run's shared files when all are selected)
    or check that a resumed run keeps its configuration; then save it."""
    if config.output.force:
        whole = set(selected) == set(crossval.all_units(config))
        shared = ["report.json", "split.json", crossval.DATASET, lineage.FILENAME] if whole else ["report.json"]
        for key in shared + [u.key(f) for u in selected for f in ("result.json", "checkpoint.json")]:
            out.delete(key)
    else:
        _check_same_config(out, config)
    out.write_bytes("config.yaml", config.to_yaml().encode())  # also proves the output is writable


def _write_once(out: Store, key: str, value: dict) -> None:
    """Write a run-wide object every process computes identically (same bytes if two race)."""
    data = json.dumps(value, indent=1).encode()
    try:
        if out.read(key) == data:
            return
    except FileNotFoundError:
        pass
    out.write_bytes(key, data)


def _examples_figure(fold: crossval.FoldData, config: Config, out: Store, prefix: str, scratch: str) -> None:
    """Fig 2: originals of this fold's training part and their five augmentations."""
    out.upload_drawn(f"{prefix}augmentation_examples.png", lambda path: augmentation.examples_figure(
        fold.train_set.images, config.augmentation, config.train.seed, path), scratch)


def _stop_if_asked(stop: train.StopFlag, where: str, world: distributed.World = distributed.SINGLE,
                   device: torch.device | None = None) -> None:
    """Raise ``Interrupted`` if SIGTERM came (on any rank: they all stop here together)."""
    if distributed.any_rank(stop.is_set(), world, device or torch.device("cpu")):
        raise Interrupted(f"stopped by {stop.signal_name or 'SIGTERM on another rank'} {where}")


def _plan(out: Store, images: dataset.ImageSet, config: Config, fresh: bool = False) -> split.Plan:
    """The run's split: the saved one when resuming (or when another fold's process saved it),
    else a new one (with --force always a new one)."""
    saved = None if fresh else _read_json(out, "split.json")
    if saved is not None:
        plan = split.Plan.from_dict(saved)
        missing = sorted(plan.keys() - set(images.keys))
        if missing:
            raise DataError(f"{out.uri_of('split.json')} names {len(missing)} images no longer in the data set "
                            f"(first: {missing[0]}); start a new run id")
        log.info("reusing the split saved with this run (%s)", out.uri_of("split.json"))
        return plan
    return split.make_plan(images.keys, images.labels.cpu().numpy(), images.patient_ids, config.split,
                           config.train.seed, (config.data.positive_class, config.data.negative_class))


def _fit_timed(name: str, state: train.TrainState, data: train.TrainData, per_rank_batch: int, train_cfg,
               preprocess, online, metrics: RunMetrics, stop: train.StopFlag, save_checkpoint,
               world: distributed.World = distributed.SINGLE, after_epoch=None, observer=None) -> None:
    """Train, timing checkpoint saves as the ``checkpoint`` stage (what training waits for:
    serializing, and an upload still in flight) and the rest as ``train``. Under torchrun
    the ranks other than 0 pass ``save_checkpoint=None``: they write nothing."""
    checkpoint_seconds = 0.0

    def save(s: train.TrainState) -> None:
        nonlocal checkpoint_seconds
        if save_checkpoint is None:
            return
        start = time.perf_counter()
        with _timed(metrics, "checkpoint", name):
            save_checkpoint(s)
        checkpoint_seconds += time.perf_counter() - start

    start = time.perf_counter()
    try:
        train.fit(name, state, data, train_cfg, preprocess, online, observer or metrics, stop, save, world=world,
                  per_rank_batch=per_rank_batch,
                  after_epoch=after_epoch)
    finally:
        metrics.stage("train", time.perf_counter() - start - checkpoint_seconds, name)


def _local_weights(uri: str | None, config: Config, scratch: str) -> str | None:
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


def aggregate(run_uri: str, storage_config: Config) -> RunOutcome:
    """``gistnet aggregate``: pool the finished units of the run at ``run_uri`` into its report."""
    out = open_store(run_uri, storage_config.storage, storage_config.data.download_threads)
    try:
        saved = out.read("config.yaml").decode()
    except FileNotFoundError:
        raise DataError(f"{out.uri}: no config.yaml, so not a gistnet run (pass the run's URI, "
                        "<output>/<run-id>)") from None
    config = load_saved(saved, out.uri_of("config.yaml"))
    run_id = run_uri.rstrip("/").rpartition("/")[2]
    final = crossval.aggregate(out, config, run_id, tempfile.gettempdir())
    tracker = Tracker(config.tracking)
    if tracker.uri and final["status"] == "complete":
        tracker.start(run_id, config.to_dict(), json.loads(out.read(crossval.DATASET)).get("lineage"))
        final = record.finish(tracker, out, final, config, tempfile.gettempdir())
    return RunOutcome(run_id, out.uri, final)
