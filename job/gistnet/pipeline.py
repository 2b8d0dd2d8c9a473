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

from gistnet import (augmentation, checklist, checkpoint, dataset, distributed, evaluate, explain, model_card,
                     predictions, report, report_html, train)
from gistnet import compile as compiling
from gistnet.config import Config, TrainConfig, replace
from gistnet.errors import ConfigError, DataError, GistnetError, Interrupted
from gistnet.metrics import RunMetrics
from gistnet.storage import Store, TransferStats, open_store, redact

log = logging.getLogger(__name__)

# Config sections that change what a run computes; resuming with different ones is refused.
RESULT_SECTIONS = ("data", "augmentation", "train", "evaluate")
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


def run(config: Config, stop: train.StopFlag | None = None, scratch: str | None = None) -> RunOutcome:
    """Run the job; push the outcome to the Pushgateway whatever happens."""
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
            outcome = _run(config, run_id, stats, metrics, stop, scratch or tempfile.gettempdir(), world)
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
         scratch: str, world: distributed.World = distributed.SINGLE) -> RunOutcome:
    device = distributed.device_for(world, train.resolve_device(config.train.device))
    train.set_determinism(config.train.deterministic, device)
    distributed.per_rank_batch(config.train.batch_size, world, config.distributed.scale_batch)  # fail early
    with distributed.process_group(world, device, config.distributed.timeout_s):
        return _run_stages(config, run_id, stats, metrics, stop, scratch, world, device)


def _run_stages(config: Config, run_id: str, stats: TransferStats, metrics: RunMetrics, stop: train.StopFlag,
                scratch: str, world: distributed.World, device: torch.device) -> RunOutcome:
    """The stages in order. Under torchrun every rank loads the data and trains; only rank 0
    writes, and the others wait for what it wrote before reading it (barriers)."""
    metrics.run_started(run_id, device.type)
    threads = config.data.download_threads
    data_store = open_store(config.data.uri, config.storage, threads, stats)
    out = open_store(config.output.uri, config.storage, threads, stats).child(run_id)
    if out.exists("report.json") and not config.output.force:
        log.info("run %s is already complete (%s); nothing to do (use --force to run it again)",
                 run_id, out.uri_of("report.json"))
        return RunOutcome(run_id, out.uri, _read_json(out, "report.json"), already_complete=True)
    if world.is_main:
        _prepare_output(out, config)
    distributed.barrier(world)
    log.info("run %s: data %s -> outputs %s (device %s)", run_id, redact(data_store.uri), out.uri, device)

    train_set, val_set, split, skipped = _load_and_split(data_store, out, config, device, metrics, world)
    names = (config.data.positive_class, config.data.negative_class)
    log.info("split (%s): train %s, validation %s, %d skipped", split.method, train_set.counts(names),
             val_set.counts(names), len(skipped))
    _stop_if_asked(stop, "after loading the data", world, device)

    with _timed(metrics, "augmentation"), _out_of_memory_guard("augmentation", config):
        data = _augment(train_set, val_set, config, out, scratch, run_id, world.is_main)
    global_batch = distributed.per_rank_batch(config.train.batch_size, world, config.distributed.scale_batch) \
        * world.size
    train.check_trainable(len(data.train_set), global_batch,
                          f"the training set after {config.augmentation.mode!r} augmentation")
    provenance = {"split": split.to_dict(), "augmentation_mode": config.augmentation.mode,
                  "augmentation_seed": config.train.seed}
    models, curves = _train_models(config, data, out, metrics, stop, scratch, provenance, val_set, world)
    if not world.is_main:
        log.info("rank %d done; rank 0 writes the report", world.rank)
        return RunOutcome(run_id, out.uri, None)

    with _timed(metrics, "report"):
        dataset_section = {
            "uri": redact(data_store.uri),
            "classes": {names[0]: "positive", names[1]: "negative"},
            "train": train_set.counts(names), "val": val_set.counts(names),
            "train_augmented": dataset.class_counts(data.train_set.labels, names),
            "augmentation_mode": config.augmentation.mode, "split_method": split.method,
            "skipped": skipped,
        }
        final = _write_report(out, run_id, config, device, dataset_section, models, curves, scratch)
    log.info("report: %s", out.uri_of("report.json"))
    return RunOutcome(run_id, out.uri, final)


def _load_and_split(data_store: Store, out: Store, config: Config, device: torch.device, metrics: RunMetrics,
                    world: distributed.World = distributed.SINGLE
                    ) -> tuple[dataset.ImageSet, dataset.ImageSet, dataset.Split, list]:
    """The training and validation sets on the device. The full set's tensor is not kept:
    once it is split it would only hold device memory. Under torchrun rank 0 makes (or
    reads) and saves the split; the others read it once it is saved."""
    loaded = dataset.load_images(data_store, config.data, device,
                                 on_stage=lambda name, seconds, n: metrics.stage(name, seconds))
    metrics.skipped.set(len(loaded.skipped))
    split = _split(out, loaded.images, config) if world.is_main else None
    distributed.barrier(world)
    split = split or _split(out, loaded.images, config)
    return loaded.images.subset(split.train), loaded.images.subset(split.val), split, loaded.skipped


def _out_of_memory_guard(stage: str, config: Config):
    return train.out_of_memory_is_a_device_error(stage, config.train.batch_size, config.data.image_size)


def _prepare_output(out: Store, config: Config) -> None:
    """Start over (--force) or check that a resumed run keeps its configuration; then save it."""
    if config.output.force:
        for key in ["report.json", "split.json", *(f"{m}/{f}" for m in config.train.models
                                                    for f in ("result.json", "checkpoint.json"))]:
            out.delete(key)
    else:
        _check_same_config(out, config)
    out.write_bytes("config.yaml", config.to_yaml().encode())  # also proves the output is writable


def _augment(train_set: dataset.ImageSet, val_set: dataset.ImageSet, config: Config, out: Store, scratch: str,
             run_id: str, write_figure: bool = True) -> train.TrainData:
    """The training tensors (paper mode: the 6x set made batch by batch), and Fig 2."""
    images, labels = train_set.images, train_set.labels
    drawn_from = None
    if config.augmentation.mode == "paper":
        drawn_from = augmentation.PaperSet(images, labels, config.augmentation, config.train.seed)
    if not write_figure:
        return train.TrainData(images, labels, val_set.images, val_set.labels, drawn_from)
    figure = Path(scratch) / f"gistnet-{run_id}-augmentation.png"
    augmentation.examples_figure(train_set.images, config.augmentation, config.train.seed, figure)
    out.upload_file("augmentation_examples.png", figure)
    figure.unlink(missing_ok=True)
    return train.TrainData(images, labels, val_set.images, val_set.labels, drawn_from)


def _train_models(config: Config, data: train.TrainData, out: Store, metrics: RunMetrics, stop: train.StopFlag,
                  scratch: str, provenance: dict, val_set: dataset.ImageSet,
                  world: distributed.World = distributed.SINGLE) -> tuple[dict, dict]:
    """Train and evaluate each model in turn; a model finished earlier in this run is reused."""
    preprocess = train.Preprocess(data.train_images.device)
    online = config.augmentation if config.augmentation.mode == "online" else None
    models, curves = {}, {}
    for name in config.train.models:
        _stop_if_asked(stop, f"before training {name}", world, data.train_images.device)
        result = _read_json(out, f"{name}/result.json")
        if result is None:
            result = _train_and_evaluate(name, config, data, preprocess, online, out, metrics, stop, scratch,
                                         provenance, val_set, world)
            if result is None:  # rank > 0: rank 0 evaluates and writes
                continue
        else:
            log.info("%s: already trained in this run; reusing %s", name, out.uri_of(f"{name}/result.json"))
        curves[name] = {"curve": result.pop("roc_curve"), "auc": result["roc_auc"]["value"] or 0.0}
        metrics.model_evaluated(name, result["metrics"])
        models[name] = result
    return models, curves


def _write_report(out: Store, run_id: str, config: Config, device: torch.device, dataset_section: dict,
                  models: dict, curves: dict, scratch: str) -> dict:
    """Plots, report.md, report.html and checklist.md, then report.json last: its presence marks the run complete."""
    artifacts = _plots(out, models, curves, scratch, run_id)
    pooled = [row for name in models for row in predictions.read(out, f"{name}/{predictions.FILENAME}")]
    predictions.write(out, pooled)
    artifacts["predictions"] = out.uri_of(predictions.FILENAME)
    figures = {"training_curves": "training_curves.png", "roc": "roc.png",
               "augmentation_examples": "augmentation_examples.png",
               **{f"gradcam_{m}": f"gradcam-{m}.png" for m, result in models.items() if "explain" in result}}
    artifacts.update({name: out.uri_of(key) for name, key in figures.items()})
    artifacts.update({"config": out.uri_of("config.yaml"), "split": out.uri_of("split.json"),
                      "report_markdown": out.uri_of("report.md"), "report_html": out.uri_of("report.html"),
                      "checklist": out.uri_of("checklist.md")})
    artifacts.update({f"model_card_{name}": out.uri_of(f"{name}/{model_card.CARD}") for name in models})
    final = report.build(run_id, config.to_dict(), device, dataset_section, models,
                         config.evaluate.selection_metric, artifacts)
    for name in models:
        out.write_bytes(f"{name}/{model_card.CARD}", model_card.render(final, name).encode())
    out.write_bytes("report.md", report.markdown(final).encode())
    out.write_bytes("report.html", report_html.render(final, {n: out.read(k) for n, k in figures.items()}).encode())
    out.write_bytes("checklist.md", checklist.markdown(final).encode())
    out.write_bytes("report.json", json.dumps(final, indent=2).encode())
    return final


def _stop_if_asked(stop: train.StopFlag, where: str, world: distributed.World = distributed.SINGLE,
                   device: torch.device | None = None) -> None:
    """Raise ``Interrupted`` if SIGTERM came (on any rank: they all stop here together)."""
    if distributed.any_rank(stop.is_set(), world, device or torch.device("cpu")):
        raise Interrupted(f"stopped by {stop.signal_name or 'SIGTERM on another rank'} {where}")


def _split(out: Store, images: dataset.ImageSet, config: Config) -> dataset.Split:
    saved = _read_json(out, "split.json")
    if saved is not None:
        split = dataset.Split.from_dict(saved)
        missing = sorted(set(split.train + split.val) - set(images.keys))
        if missing:
            raise DataError(f"{out.uri_of('split.json')} names {len(missing)} images no longer in the data set "
                            f"(first: {missing[0]}); start a new run id")
        log.info("reusing the split saved with this run (%s)", out.uri_of("split.json"))
        return split
    split = dataset.make_split(images, config.data.val_fraction, config.train.seed)
    out.write_bytes("split.json", json.dumps(split.to_dict(), indent=1).encode())
    return split


def _train_and_evaluate(name, config: Config, data: train.TrainData, preprocess, online, out: Store,
                        metrics: RunMetrics, stop, scratch, provenance: dict, val_set: dataset.ImageSet,
                        world: distributed.World = distributed.SINGLE) -> dict | None:
    """Train (every rank), then evaluate and write (rank 0; the others return None)."""
    init = _local_weights(config.train.init_weights.get(name), config, scratch)
    scale = config.distributed.scale_batch
    train_cfg = replace(config, train={"learning_rate": distributed.learning_rate(
        config.train.learning_rate, world, scale)}).train
    state = train.new_state(name, train_cfg, data.train_images.device, init)
    state.provenance = provenance
    checkpoint.load_latest(out, name, state, scratch)
    metrics.model_started(name, config.train.epochs)
    if state.resumed_from_epoch is not None:
        metrics.epoch.labels(model=name).set(state.epoch)
    after_epoch = None
    if not world.distributed:  # DDP steps eager: a compiled twin of the bare model would skip its gradient sync
        cache_store = open_store(config.output.uri, config.storage) if config.train.compile_cache else None
        after_epoch = compiling.attach(state, name, config.train.compile, config.train.batch_size,
                                       config.data.image_size, data.train_images.device, cache_store)
    if not world.is_main:  # trains in step with rank 0, which alone checkpoints, evaluates and writes
        with _out_of_memory_guard(f"{name} training", config):
            _fit_timed(name, state, data, config, train_cfg, preprocess, online, metrics, stop, None, world)
        return None
    with checkpoint.CheckpointWriter(out, name, scratch) as writer:
        with _out_of_memory_guard(f"{name} training", config):
            _fit_timed(name, state, data, config, train_cfg, preprocess, online, metrics, stop, writer.save, world,
                       after_epoch)
        with _timed(metrics, "upload", name):
            if state.resumed_from_epoch != state.epoch:
                writer.save(state)
            pointer = writer.wait() or checkpoint.read_pointer(out, name)
            weights = checkpoint.save_weights(out, name, state.model, scratch)
    with _timed(metrics, "evaluate", name), _out_of_memory_guard(f"{name} evaluation", config):
        scored = evaluate.predict(state.model, data.val_images, data.val_labels, config.train.batch_size, preprocess)
        diagnostics = evaluate.diagnostic_report(data.val_labels, scored.probabilities, config.evaluate.ci_method,
                                                 config.evaluate.confidence_level, scores=scored.margins)
    if config.explain.enabled:
        with _timed(metrics, "explain", name), _out_of_memory_guard(f"{name} Grad-CAM", config):
            diagnostics["explain"] = _explain(name, state.model, data, scored.probabilities, preprocess, config, out,
                                              scratch)
    result = {"history": state.history, **diagnostics, "checkpoint": weights,
              "resumable_checkpoint": {"uri": out.uri_of(pointer["key"]), "sha256": pointer["sha256"],
                                       "bytes": pointer["bytes"], "epoch": pointer["epoch"]},
              "resumed_from_epoch": state.resumed_from_epoch,
              "roc_curve": evaluate.roc_curve_points(data.val_labels, scored.margins)}
    names = (config.data.positive_class, config.data.negative_class)
    rows = predictions.rows(val_set.keys, val_set.patient_ids, data.val_labels.cpu().numpy(), names, None, name,
                            scored.probabilities.float().cpu().numpy(), scored.margins.double().cpu().numpy())
    predictions.write(out, rows, f"{name}/{predictions.FILENAME}")
    out.write_bytes(f"{name}/result.json", json.dumps(result).encode())
    return result


def _fit_timed(name: str, state: train.TrainState, data: train.TrainData, config: Config, train_cfg: TrainConfig,
               preprocess, online, metrics: RunMetrics, stop: train.StopFlag, save_checkpoint,
               world: distributed.World = distributed.SINGLE, after_epoch=None) -> None:
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
        train.fit(name, state, data, train_cfg, preprocess, online, metrics, stop, save, world=world,
                  per_rank_batch=distributed.per_rank_batch(config.train.batch_size, world,
                                                            config.distributed.scale_batch),
                  after_epoch=after_epoch)
    finally:
        metrics.stage("train", time.perf_counter() - start - checkpoint_seconds, name)


def _explain(name: str, model, data: train.TrainData, probabilities, preprocess, config: Config, out: Store,
             scratch: str) -> dict:
    """Grad-CAM gallery of the validation images (uploaded as gradcam-<model>.png) and its sanity check."""
    path = Path(tempfile.mkdtemp(dir=scratch)) / "gradcam.png"
    summary = explain.explain(name, model, data.val_images, data.val_labels, probabilities, preprocess,
                              config.train.batch_size, (config.data.positive_class, config.data.negative_class),
                              config.explain.max_misclassified, config.explain.correct_per_class, config.train.seed,
                              path)
    out.upload_file(f"gradcam-{name}.png", path)
    path.unlink(missing_ok=True)
    return summary


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


def _plots(out: Store, models: dict, curves: dict, scratch: str, run_id: str) -> dict:
    artifacts = {}
    for key, draw in (("training_curves.png", lambda p: report.training_curves(
            {n: m["history"] for n, m in models.items()}, p)), ("roc.png", lambda p: report.roc_figure(curves, p))):
        path = Path(scratch) / f"gistnet-{run_id}-{key}"
        draw(path)
        out.upload_file(key, path)
        path.unlink(missing_ok=True)
        artifacts[key.removesuffix(".png")] = out.uri_of(key)
    return artifacts
