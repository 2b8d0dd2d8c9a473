"""Training progress for Prometheus: a scrape endpoint while the job runs and a Pushgateway
push when it ends.

All metrics live in a dedicated registry (no process/platform collectors from the default
one). Updates are host-side arithmetic on numbers the training loop already has: step
counts are Python ints, losses arrive once per epoch, so nothing forces a device sync.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, pushadd_to_gateway, start_http_server
from prometheus_client.exposition import basic_auth_handler, default_handler
from prometheus_client.core import CounterMetricFamily, Metric

import gistnet
from gistnet.errors import ConfigError, GistnetError
from gistnet.config import redact
from gistnet.observe.transfers import TransferStats

log = logging.getLogger(__name__)

LAST_SUCCESS = "gistnet_last_success_timestamp_seconds"


class _TransferCollector:
    """Exposes the storage byte counters at scrape time."""

    def __init__(self, stats: TransferStats):
        self.stats = stats

    def collect(self):
        yield CounterMetricFamily("gistnet_downloaded_bytes", "Bytes read from storage.", value=self.stats.bytes_downloaded)
        yield CounterMetricFamily("gistnet_uploaded_bytes", "Bytes written to storage.", value=self.stats.bytes_uploaded)


def _auth_handler(url: str):
    """A URL with ``user:password@`` becomes the bare URL plus HTTP basic auth (urllib would
    otherwise take the credentials for part of the host name)."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username is None:
        return url, default_handler
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    host += f":{parts.port}" if parts.port else ""
    bare = urlunsplit(parts._replace(netloc=host))
    username, password = unquote(parts.username), unquote(parts.password or "")

    def handler(url, method, timeout, headers, data):
        return basic_auth_handler(url, method, timeout, headers, data, username, password)

    return bare, handler


class _WithLabels:
    """Every sample of ``registry`` with constant labels added (a ``rank`` per process)."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]):
        self.registry, self.labels = registry, labels

    def collect(self):
        for family in self.registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [s._replace(labels={**s.labels, **self.labels}) for s in family.samples]
            yield labelled


class JobMetrics:
    """What every gistnet job exposes (the run, stage timings, outcome, transfers), served and
    pushed the same way; ``RunMetrics`` (training) and ``PredictMetrics`` add their own."""

    def __init__(self, stats: TransferStats | None = None):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.info = Info("gistnet_run", "The run: gistnet version, run id and device.", registry=r)
        self.start_time = Gauge("gistnet_run_start_timestamp_seconds", "When this run started (Unix time).", registry=r)
        self.end_time = Gauge("gistnet_run_end_timestamp_seconds", "When this run ended (Unix time).", registry=r)
        self.last_success = Gauge(LAST_SUCCESS, "When a run last finished successfully (Unix time).", registry=r)
        self.exit_code = Gauge("gistnet_run_exit_code", "Exit code of the run that ended (0 success); see README.", registry=r)
        self.stage_seconds = Gauge("gistnet_stage_duration_seconds", "Wall time of each stage of the run.",
                                   ["stage", "model"], registry=r)
        if stats is not None:
            r.register(_TransferCollector(stats))
        self._server = None

    # ------------------------------------------------------------ serving and pushing

    def serve(self, port: int, addr: str = "0.0.0.0", labels: dict[str, str] | None = None) -> None:
        """Serve /metrics on ``port`` (0: not at all); ``labels`` are added to every sample."""
        if port:
            registry = self.registry
            if labels:
                registry = CollectorRegistry(auto_describe=False)
                registry.register(_WithLabels(self.registry, labels))
            try:
                self._server, _ = start_http_server(port, addr=addr, registry=registry)
            except OSError as exc:
                raise ConfigError(f"metrics.port {port}: cannot serve /metrics ({exc.strerror or exc}); "
                                  "pick a free port or 0 to disable") from None
            log.info("serving Prometheus metrics on :%d/metrics", port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def push(self, url: str, job: str, grouping: dict[str, str], succeeded: bool) -> None:
        """POST (push-add) to the Pushgateway grouped by job, no instance label. A failed run
        leaves ``gistnet_last_success_timestamp_seconds`` out, so the last success survives."""
        if not url:
            return
        registry = self.registry
        if not succeeded:
            names = {m.name for m in self.registry.collect()} - {LAST_SUCCESS}
            names = {n + suffix for n in names for suffix in ("", "_total", "_info", "_created")}
            registry = self.registry.restricted_registry(names)
        url, handler = _auth_handler(url)
        try:
            pushadd_to_gateway(url, job=job, registry=registry, grouping_key=dict(grouping), timeout=10,
                               handler=handler)
            log.info("pushed metrics to %s (job=%s)", redact(url), job)
        except Exception as exc:  # noqa: BLE001 - the run's outputs are safe; a dead gateway must not fail it
            log.warning("could not push metrics to %s: %s", redact(url), type(exc).__name__)

    # ------------------------------------------------------------ run events

    def run_started(self, run_id: str, device: str) -> None:
        self.info.info({"version": gistnet.__version__, "run_id": run_id, "device": device})
        self.start_time.set(time.time())

    def stage(self, name: str, seconds: float, model: str = "") -> None:
        """Add ``seconds`` to a stage: one timed in pieces (checkpoints) adds up."""
        self.stage_seconds.labels(stage=name, model=model).inc(seconds)

    def run_ended(self, exit_code: int) -> None:
        now = time.time()
        self.end_time.set(now)
        self.exit_code.set(exit_code)
        if exit_code == 0:
            self.last_success.set(now)


class RunMetrics(JobMetrics):
    """The training job's metrics; also the training loop's observer (``on_step``/``on_epoch``)."""

    def __init__(self, stats: TransferStats | None = None):
        super().__init__(stats)
        r = self.registry
        self.epoch = Gauge("gistnet_epoch", "Epochs completed.", ["model"], registry=r)
        self.epochs_planned = Gauge("gistnet_epochs_planned", "Epochs the model will train for.", ["model"], registry=r)
        self.train_loss = Gauge("gistnet_train_loss", "Mean training cross-entropy of the last epoch.", ["model"], registry=r)
        self.train_accuracy = Gauge("gistnet_train_accuracy_ratio", "Training accuracy of the last epoch.", ["model"], registry=r)
        self.val_loss = Gauge("gistnet_validation_loss", "Mean validation cross-entropy of the last epoch.", ["model"], registry=r)
        self.val_accuracy = Gauge("gistnet_validation_accuracy_ratio", "Validation accuracy of the last epoch.", ["model"], registry=r)
        self.images = Counter("gistnet_images_processed", "Training images processed (augmented copies included).",
                              ["model"], registry=r)
        self.throughput = Gauge("gistnet_images_per_second",
                                "Training images per second of the last epoch's training steps (validation excluded).",
                                ["model"], registry=r)
        self.skipped = Gauge("gistnet_images_skipped", "Images skipped because they could not be used.", registry=r)
        self.final = Gauge("gistnet_validation_metric_ratio", "Final validation sensitivity, specificity and accuracy.",
                           ["model", "metric"], registry=r)

    def model_started(self, model: str, epochs: int) -> None:
        self.epochs_planned.labels(model=model).set(epochs)
        self.epoch.labels(model=model).set(0)
        self.images.labels(model=model)

    def on_step(self, model: str, images: int) -> None:
        self.images.labels(model=model).inc(images)

    def on_epoch(self, model: str, record: dict, total_epochs: int) -> None:
        self.epochs_planned.labels(model=model).set(total_epochs)
        self.epoch.labels(model=model).set(record["epoch"])
        self.train_loss.labels(model=model).set(record["train_loss"])
        self.train_accuracy.labels(model=model).set(record["train_accuracy"])
        self.val_loss.labels(model=model).set(record["val_loss"])
        self.val_accuracy.labels(model=model).set(record["val_accuracy"])
        if record.get("images") and record.get("train_seconds", 0) > 0:  # the training steps only
            self.throughput.labels(model=model).set(record["images"] / record["train_seconds"])

    def model_evaluated(self, model: str, metrics: dict) -> None:
        for name in ("sensitivity", "specificity", "accuracy"):
            value = metrics[name]["value"]
            self.final.labels(model=model, metric=name).set(float("nan") if value is None else value)


class PredictMetrics(JobMetrics):
    """``gistnet predict``: images scored and unusable, scoring throughput, and the stage
    timings (download, decode, score) summed over the chunks."""

    def __init__(self, stats: TransferStats | None = None):
        super().__init__(stats)
        r = self.registry
        self.scored = Counter("gistnet_images_scored", "Images scored by gistnet predict.", ["model"], registry=r)
        self.unusable = Gauge("gistnet_images_unusable", "Images gistnet predict could not use.", registry=r)
        self.score_rate = Gauge("gistnet_scored_images_per_second", "Images scored per second of scoring so far.",
                                ["model"], registry=r)
        self._scored: dict[str, int] = {}
        self._score_seconds: dict[str, float] = {}

    def chunk_scored(self, model: str, images: int, seconds: float, unusable: int) -> None:
        self.scored.labels(model=model).inc(images)
        self.unusable.inc(unusable)
        self.stage("score", seconds, model)
        self._scored[model] = self._scored.get(model, 0) + images
        self._score_seconds[model] = self._score_seconds.get(model, 0.0) + seconds
        if self._score_seconds[model] > 0:
            self.score_rate.labels(model=model).set(self._scored[model] / self._score_seconds[model])


PROMOTION_DECISION = "gistnet_promotion_decision"
PROMOTION_REFUSALS = "gistnet_promotion_consecutive_refusals"


def promotion_registry(promoted: bool, consecutive_refusals: int) -> CollectorRegistry:
    """``gistnet promote``'s outcome: the decision (1 promoted, 0 refused) and the refusals in a row."""
    r = CollectorRegistry(auto_describe=True)
    Gauge(PROMOTION_DECISION, "The last champion/challenger decision: 1 promoted, 0 refused.",
          registry=r).set(1 if promoted else 0)
    Gauge(PROMOTION_REFUSALS, "Challengers refused in a row since the last promotion (the registry's count).",
          registry=r).set(consecutive_refusals)
    Gauge("gistnet_promotion_timestamp_seconds", "When the last promotion decision was made (Unix time).",
          registry=r).set(time.time())
    return r


def push_promotion(url: str, job: str, grouping: dict[str, str], promoted: bool, consecutive_refusals: int) -> None:
    """Push the gate's decision (push-add, grouped like the run's other metrics plus mode=promote)."""
    if not url:
        return
    url, handler = _auth_handler(url)
    try:
        pushadd_to_gateway(url, job=job, registry=promotion_registry(promoted, consecutive_refusals),
                           grouping_key={**grouping, "mode": "promote"}, timeout=10, handler=handler)
        log.info("pushed the promotion decision to %s (job=%s)", redact(url), job)
    except Exception as exc:  # noqa: BLE001 - the decision is recorded; a dead gateway must not undo it
        log.warning("could not push the promotion decision to %s: %s", redact(url), type(exc).__name__)


def pushed_job(metrics_cfg, mode: str, work):
    """``work(metrics, stats)`` of a scoring job (``predict``, ``evaluate``) with ``/metrics`` served,
    then its outcome (the exit code) pushed under ``mode`` whatever happens."""
    stats = TransferStats()
    metrics = PredictMetrics(stats)
    exit_code = 1
    try:
        metrics.serve(metrics_cfg.port)
        summary = work(metrics, stats)
        exit_code = 0
        return summary
    except GistnetError as exc:
        exit_code = exc.exit_code
        raise
    finally:
        metrics.run_ended(exit_code)
        metrics.push(metrics_cfg.pushgateway, metrics_cfg.job_name, {**metrics_cfg.grouping_labels, "mode": mode},
                     succeeded=exit_code == 0)
        metrics.close()
