"""One training run, stage by stage:
storage -> dataset -> augmentation -> train -> evaluate -> report -> storage.

Each stage lives in its own module; this file only orders them, times them for the
metrics, and makes re-running a run id safe: a finished run is a no-op (or runs the promotion gate it
configured but never decided; another configuration is refused), an interrupted
one resumes from its newest complete checkpoint with the same split.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone

import yaml

from gistnet.config import Config, load_saved, replace
from gistnet.data import dataset, fingerprint, lineage, privacy, runs, split
from gistnet.data.overlap import check_apart
from gistnet.observe.tracking import Tracker, abort_open
from gistnet.ops import record
from gistnet.data.storage import Store, TransferStats, open_store, redact
from gistnet.errors import ConfigError, DataError, GistnetError
from gistnet.evidence import aggregate as aggregation
from gistnet.evidence import clustered
from gistnet.evidence import report, sections, subgroups
from gistnet.observe.metrics import RunMetrics
from gistnet.training import distributed, train, units
from gistnet.training.context import RunContext

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
    ``runs.select``); push the outcome to the Pushgateway whatever happens."""
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
        if exit_code != 0:  # MLflow runs this process started end FAILED with the reason, not RUNNING
            failure = sys.exc_info()[1]
            abort_open(f"{type(failure).__name__}: {failure}")
        metrics.run_ended(exit_code)
        if world.is_main:
            metrics.push(config.metrics.pushgateway, config.metrics.job_name, config.metrics.grouping_labels,
                         succeeded=exit_code == 0)
        metrics.close()


def _check_same_config(out: Store, config: Config, complete: bool = False) -> None:
    """Refuse (exit 3) to resume, or to call finished (``complete``), a run id saved with another
    configuration of what a run computes (``RESULT_SECTIONS``, less ``OPERATIONAL_KEYS``)."""
    try:
        saved = yaml.safe_load(out.read("config.yaml"))
    except FileNotFoundError:
        return
    current = config.to_dict()

    def result_keys(section: str, values: dict | None) -> dict:
        return {k: v for k, v in (values or {}).items() if (section, k) not in OPERATIONAL_KEYS}

    changed = [s for s in RESULT_SECTIONS if result_keys(s, saved.get(s)) != result_keys(s, current[s])]
    if changed and complete:
        raise ConfigError(f"run {out.uri} is already complete with a different configuration ({', '.join(changed)}): "
                          "nothing was run; use a new --run-id, or --force to train it again with this configuration")
    if changed:
        raise ConfigError(f"run {out.uri} exists with a different configuration ({', '.join(changed)}); "
                          "use a new --run-id, or --force to start it over")


def _read_json(store: Store, key: str) -> dict | None:
    try:
        return json.loads(store.read(key))
    except FileNotFoundError:
        return None


def _run(config: Config, run_id: str, stats: TransferStats, metrics: RunMetrics, stop: train.StopFlag,
         scratch: str, world: distributed.World = distributed.SINGLE, fold: str | None = None,
         model: str | None = None) -> RunOutcome:
    selected = runs.select(fold, model, config)  # a bad --fold/--model is refused before anything is written
    device = distributed.device_for(world, train.resolve_device(config.train.device))
    train.set_determinism(config.train.deterministic, device)
    distributed.per_rank_batch(config.train.batch_size, world, config.distributed.scale_batch)  # fail early
    with distributed.process_group(world, device, config.distributed.timeout_s):
        metrics.run_started(run_id, device.type)
        threads = config.data.download_threads
        check_apart(config.data.uri, config.output.uri)  # before anything is written
        data_store = open_store(config.data.uri, config.storage, threads, stats)
        out = open_store(config.output.uri, config.storage, threads, stats).child(run_id)
        ctx = RunContext(config, run_id, out, metrics, stop, world, device, scratch, report.environment(device))
        return _run_stages(ctx, data_store, selected, fold, model)


def _run_stages(ctx: RunContext, data_store: Store, selected: list[runs.Unit], fold: str | None = None,
                model: str | None = None) -> RunOutcome:
    """The stages in order, for the ``selected`` units this process trains. Under torchrun every
    rank loads the data and trains; only rank 0 writes, and the others wait for what it wrote
    before reading it (barriers)."""
    config, out, world, run_id = ctx.config, ctx.out, ctx.world, ctx.run_id
    done = complete_report(out)
    if done is not None and not config.output.force:
        _check_same_config(out, config, complete=True)  # other flags on a finished run id: exit 3, not a no-op
        if config.promotion.registry and world.is_main:
            from gistnet.ops import promotion

            if not promotion.decided(out, config.promotion.registry, config):  # e.g. the gate failed with exit 5
                log.info("run %s is complete but its promotion to %s was not decided; running the gate", run_id,
                         redact(config.promotion.registry))
                promotion.gate(out.uri, config.promotion.registry, config, ctx.scratch)  # refused: exit 11
                return RunOutcome(run_id, out.uri, done, already_complete=True)
        log.info("run %s is already complete (%s); nothing to do (use --force to run it again)",
                 run_id, out.uri_of("report.json"))
        return RunOutcome(run_id, out.uri, done, already_complete=True)
    log.info("run %s: data %s -> outputs %s (device %s)", run_id, redact(data_store.uri), out.uri, ctx.device)
    pseudo = privacy.for_run(out, config.data.pseudonymize_keys, fresh=config.output.force)
    with privacy.kept_on_failure(pseudo, out, save=world.is_main):  # an error names keys by their pseudonyms
        loaded, plan, config, selected, used = _load_and_plan(ctx, data_store, pseudo, selected, fold, model)
    tracker = Tracker(config.tracking, active=world.is_main)  # under torchrun rank 0 logs
    if world.is_main:
        tracker.start(run_id, config.to_dict(), used.summary(lineage.name_of(redact(data_store.uri)),
                                                             redact(data_store.uri)))
    distributed.barrier(world)
    if not world.is_main:  # the others read what rank 0 saved
        plan = _plan(out, loaded.images, config, fresh=False)
        config, selected = _site_folds(config, plan, selected, fold, model)
    # leave-one-site-out: split.folds = the number of sites
    ctx = dataclasses.replace(ctx, config=config, tracker=tracker)
    ctx.stop_if_asked("after loading the data")

    folds = list(dict.fromkeys(u.fold for u in selected))  # in order, each prepared once
    full_set = [loaded.images]  # the last fold takes it out, so the full set is freed once split
    del loaded
    for n, fold_index in enumerate(folds):
        units.train_fold(ctx, fold_index, [u for u in selected if u.fold == fold_index], plan, full_set,
                         last=n == len(folds) - 1)
    if not world.is_main:
        log.info("rank %d done; rank 0 writes the report", world.rank)
        return RunOutcome(run_id, out.uri, None)

    pending = [u for u in runs.all_units(config) if not runs.is_finished(out, u)]
    if pending:
        log.info("this process's units are done; waiting for %s; the last one to finish writes the report "
                 "(or run: gistnet aggregate --run %s)", ", ".join(u.name() for u in pending), out.uri)
        return RunOutcome(run_id, out.uri, None)
    with ctx.timed("report"):
        final = aggregation.aggregate(out, config, run_id, ctx.scratch)
        final = record.finish(ctx.tracker, out, final, config, ctx.scratch)
    for name, m in final["models"].items():
        ctx.metrics.model_evaluated(name, m["metrics"])
    log.info("report: %s", out.uri_of("report.json"))
    if config.promotion.registry and final["status"] == "complete":  # the one process that wrote the report
        from gistnet.ops import promotion

        promotion.gate(out.uri, config.promotion.registry, config, ctx.scratch)  # refused: exit 11
    return RunOutcome(run_id, out.uri, final)


def _load_and_plan(ctx: RunContext, data_store: Store, pseudo, selected: list[runs.Unit], fold: str | None,
                   model: str | None):
    """Load the data; on rank 0 plan the split and write the run's inputs. Returns (loaded, plan
    (None on other ranks), config, selected, lineage used (None on other ranks))."""
    config, out, world = ctx.config, ctx.out, ctx.world
    plan = used = None
    loaded = dataset.load_images(data_store, config.data, ctx.device,
                                 on_stage=lambda name, seconds, n: ctx.metrics.stage(name, seconds), pseudo=pseudo,
                                 mapping=out)
    privacy.check_shared(pseudo, world.distributed or set(selected) != set(runs.all_units(config)))
    ctx.metrics.skipped.set(len(loaded.skipped))
    head = ctx.head_classes
    covariates = sections.covariate_map(loaded.images.keys, loaded.images.sites, loaded.images.covariates)
    subgroups.check_columns(config.evaluate.subgroups, sections.columns(covariates), data_store.uri_of(config.data.manifest))
    if world.is_main:  # rank 0 plans (an impossible split is refused before anything is written) and writes
        plan = _plan(out, loaded.images, config, fresh=config.output.force)
        config, selected = _site_folds(config, plan, selected, fold, model)
        _prepare_output(out, config, selected)
        pseudo.save(out)
        if covariates:
            _write_once(out, sections.COVARIATES, covariates)
        # lineage.json lists every object key: with data.pseudonymize_keys it stays under private/
        used = lineage.settle(out.child("private") if config.data.pseudonymize_keys else out, loaded.lineage,
                              fresh=config.output.force)  # a resume on changed data: exit 4
        _write_once(out, "split.json", plan.to_dict())
        _write_once(out, runs.DATASET, {
            "uri": redact(data_store.uri), "classes": dataset_roles(config.data),
            "images": loaded.images.counts(head), "augmentation_mode": config.augmentation.mode,
            "patients": clustered.images_per_patient(loaded.images.patient_ids),
            "split_method": plan.parts[0].method, "skipped": loaded.skipped,
            "figures_withheld": loaded.images.withheld,
            "lineage": used.summary(lineage.name_of(redact(data_store.uri)), redact(data_store.uri))})
        # the development images (training + validation) by pixel content: predict leaves them out of its metrics
        development = set(plan.keys())  # and their patients (pseudonyms): evaluate leaves those patients out
        ids = [p for k, p in zip(loaded.images.keys, loaded.images.patient_ids) if k in development and p]
        _write_once(out, fingerprint.FILENAME, fingerprint.document(
            {k: loaded.fingerprints[k] for k in development}, config.data.image_size,
            *((ids, pseudo.check()) if ids else ())))
    return loaded, plan, config, selected, used


def complete_report(out: Store) -> dict | None:
    """The run's report if it is complete (a partial one from ``aggregate`` does not count)."""
    rep = _read_json(out, "report.json")
    return rep if rep is not None and rep.get("status") == "complete" else None


def _prepare_output(out: Store, config: Config, selected: list[runs.Unit]) -> None:
    """Start over (--force: the selected units, and the run's shared files when all are selected)
    or check that a resumed run keeps its configuration; then save it."""
    if config.output.force:
        whole = set(selected) == set(runs.all_units(config))
        shared = ["report.json", "split.json", runs.DATASET, lineage.FILENAME, f"private/{lineage.FILENAME}"] if whole else ["report.json"]
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
                           config.train.seed, config.data.endpoint_classes, images.sites, images.lesion_ids,
                           config.data.head_classes)


def dataset_roles(data) -> dict[str, str]:
    """dataset.json's ``classes``: the positive class, then each other one ``negative`` (two
    classes, as always) or ``other`` (K classes: the endpoint is positive against every other)."""
    other = "negative" if len(data.classes) == 2 else "other"
    return {data.positive_class: "positive", **{c: other for c in data.classes if c != data.positive_class}}


def _site_folds(config: Config, plan: split.Plan, selected: list, fold: str | None, model: str | None):
    """Leave-one-site-out: the folds are the sites, known once the data is listed (split.folds = their number)."""
    if plan.method != split.SITE:
        return config, selected
    config = replace(config, split={"folds": len(plan.parts)})
    return config, runs.select(fold, model, config)


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
    final = aggregation.aggregate(out, config, run_id, tempfile.gettempdir())
    tracker = Tracker(config.tracking)
    if tracker.uri and final["status"] == "complete":
        tracker.start(run_id, config.to_dict(), json.loads(out.read(runs.DATASET)).get("lineage"))
        final = record.finish(tracker, out, final, config, tempfile.gettempdir())
    return RunOutcome(run_id, out.uri, final)
