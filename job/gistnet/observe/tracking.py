"""MLflow experiment tracking: optional (``pip install 'gistnet[mlflow]'``), beside the Prometheus metrics.

On when ``tracking.mlflow_uri`` is set, or else when MLflow's own ``MLFLOW_TRACKING_URI`` is
(the config key wins). One gistnet run is one MLflow parent run (tag ``gistnet.run_id``); each
(fold, model) unit is a child run holding that unit's per-epoch losses and accuracies
(step = epoch). Processes that share a run id (fan-out) find the same parent by its tag. The
parent holds the resolved config as params, the data set as an input, the final metrics and
their intervals, the report and figures as artifacts, and each trained model (a hold-out network
or a k-fold run's fold ensemble), registered as ``<tracking.model_prefix>-<model>``. ``gistnet
export`` later attaches to the same parent run (its id from report.json) and registers the ONNX
file as another version of that name (tag ``gistnet.format: onnx``).

A server that fails does not lose the training: the first failure is logged once as a warning,
tracking stops for the rest of the run, and the report records it (``tracking.status: failed``).
With ``tracking.required: true`` the failure is a ``TrackingError`` (exit 5) instead. Either way
the MLflow runs this process started or reopened are ended ``FAILED`` with the reason in the tag
``gistnet.tracking_error`` (tried at the failure, and again when the process finishes or fails:
a server that was only briefly down gets it then), never left ``RUNNING``; a run that fails
for another reason (``abort``) ends its runs ``FAILED`` with that reason. A resumed run reopens them.
Every run gistnet creates carries MLflow's own context tags (``mlflow.user``,
``mlflow.source.name``/``type``, the git commit where there is one) and ``gistnet.version``. MLflow's
credentials come from ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN`` only: the CLI refuses a
``user:password@`` in the URI (``check_uri``, exit 3), MLflow's own "View run at <URI>" lines are
silenced, and every message gistnet writes is redacted all the same.

Only ``config`` and ``errors`` are imported from gistnet; stored files and trained models come
in as plain bytes and torch modules.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from gistnet import __version__
from gistnet.config import TrackingConfig, redact
from gistnet.errors import ConfigError, TrackingError

log = logging.getLogger(__name__)

RUN_TAG = "gistnet.run_id"
ROLE_TAG = "gistnet.role"
UNIT_TAG = "gistnet.unit"
DIGEST_TAG = "gistnet.data_digest"
PARENT_TAG = "mlflow.parentRunId"
VERSION_TAG = "gistnet.version"
ERROR_TAG = "gistnet.tracking_error"  # why a run ended FAILED
# MLflow's HTTP client retries a refused connection for minutes by default; a job bounds it.
# MLflow's own "View run ... at <tracking URI>" lines on stdout are silenced: a job logs, it does not print.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
CREDENTIAL_VARIABLES = "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
# MLflow's dataset digest column holds 36 characters: the first 32 hex digits of the sha256 go
# there, the full digest is the run tag gistnet.data_digest and the dataset profile.
MLFLOW_DIGEST_CHARS = 32


def tracking_uri(cfg: TrackingConfig, environ: Mapping[str, str] = os.environ) -> str:
    return cfg.mlflow_uri or environ.get("MLFLOW_TRACKING_URI", "")


def check_uri(cfg: TrackingConfig, environ: Mapping[str, str] = os.environ) -> None:
    """Refuse (exit 3) a tracking URI that carries ``user:password@``, naming where it came from and
    never its password: MLflow shows its tracking URI in its own messages. Credentials come only
    from MLflow's environment variables, as the Helm chart requires."""
    uri = tracking_uri(cfg, environ)
    if uri and redact(uri) != uri:
        where = ("tracking.mlflow_uri (or GISTNET_TRACKING_MLFLOW_URI)" if cfg.mlflow_uri
                 else "MLFLOW_TRACKING_URI")
        raise ConfigError(f"{where} must not carry user:password@ ({redact(uri)}): put the credentials in "
                          f"{CREDENTIAL_VARIABLES}")


def _one_line(text: str, limit: int = 300) -> str:
    text = redact(" ".join(str(text).split()))
    return text if len(text) <= limit else text[:limit] + "..."


def run_tags(tags: dict[str, str]) -> dict[str, str]:
    """``tags`` with MLflow's context tags (``mlflow.user``, ``mlflow.source.*``, git) as its fluent
    API sets them, and gistnet's version."""
    from mlflow.tracking.context.registry import resolve_tags

    return resolve_tags({VERSION_TAG: __version__, **tags})


def flat_params(tree: dict, prefix: str = "") -> dict[str, str]:
    """The config tree as MLflow params: ``section.key`` -> its value as text."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and prefix == "":
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return out


class Tracker:
    """MLflow logging for one gistnet run; a no-op when tracking is off or has failed."""

    def __init__(self, cfg: TrackingConfig, environ: Mapping[str, str] = os.environ, active: bool = True):
        self.cfg = cfg
        self.uri = tracking_uri(cfg, environ) if active else ""  # under DDP only rank 0 is active
        self.error: str | None = None
        self.client = None
        self.parent_id: str | None = None
        self.experiment_id: str | None = None
        self.registered: dict[str, dict] = {}
        self.open_runs: list[str] = []  # the MLflow runs this process started or reopened, not yet ended

    @property
    def enabled(self) -> bool:
        return bool(self.uri) and self.error is None

    def status(self) -> dict | None:
        """What report.json records under ``tracking`` (None when tracking is off)."""
        if not self.uri:
            return None
        out = {"status": "failed" if self.error else "logged", "uri": redact(self.uri),
               "experiment": self.cfg.experiment, "mlflow_run_id": self.parent_id, "models": self.registered}
        if self.error:
            out["error"] = self.error
        return out

    def _call(self, what: str, fn: Callable):
        """Run one MLflow call; on failure warn once (or raise with tracking.required) and stop tracking."""
        if not self.enabled:
            return None
        try:
            return fn()
        except TrackingError:
            raise
        except Exception as exc:  # noqa: BLE001 - any client/server failure is a tracking failure
            self.error = _one_line(f"{what}: {type(exc).__name__}: {exc}")
            self._end_open_runs(self.error)
            if self.cfg.required:
                raise TrackingError(f"MLflow at {redact(self.uri)} failed and tracking.required is true: "
                                    f"{self.error}") from None
            log.warning("MLflow tracking at %s failed (%s); training goes on without tracking, and "
                        "report.json records the failure", redact(self.uri), self.error)
            return None

    def _end_open_runs(self, reason: str) -> None:
        """End every run this process started and has not ended: ``FAILED``, the reason in a tag. Best
        effort, whatever the tracker's state: a server still down keeps them for a later try."""
        if self.client is None:
            return
        for run_id in list(self.open_runs):
            try:
                self.client.set_tag(run_id, ERROR_TAG, redact(reason)[:5000])
                self.client.set_terminated(run_id, "FAILED")
            except Exception as exc:  # noqa: BLE001 - the server is still failing
                log.debug("could not end MLflow run %s: %s", run_id, _one_line(f"{type(exc).__name__}: {exc}"))
                continue
            self.open_runs.remove(run_id)

    def _ended(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)
        if run_id in self.open_runs:
            self.open_runs.remove(run_id)
        if not self.open_runs and self in _STARTED:
            _STARTED.remove(self)

    def abort(self, reason: str) -> None:
        """The gistnet run failed (or tracking did): end the runs this process started ``FAILED``."""
        self._end_open_runs(self.error or _one_line(reason))

    def _opened(self, run_id: str, found: bool) -> str:
        if found:  # a resumed (or fan-out) run: running again
            self.client.update_run(run_id, status="RUNNING")
        self.open_runs.append(run_id)
        if self not in _STARTED:
            _STARTED.append(self)
        return run_id

    # ------------------------------------------------------------ the parent run

    def start(self, run_id: str, config: dict, dataset: dict | None) -> None:
        """Find (a resumed or fan-out run) or create the parent run of ``run_id``; log the
        resolved config as params and the data set as an input."""
        if not self.uri:
            return
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        self._call("connecting", lambda: self._start(run_id, config, dataset))

    def _start(self, run_id: str, config: dict, dataset: dict | None) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise RuntimeError("the mlflow package is not installed (pip install 'gistnet[mlflow]')") from None
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        experiment = self.client.get_experiment_by_name(self.cfg.experiment)
        self.experiment_id = (experiment.experiment_id if experiment is not None
                              else self.client.create_experiment(self.cfg.experiment))
        found = self.client.search_runs([self.experiment_id],
                                        f"tags.`{RUN_TAG}` = '{run_id}' and tags.`{ROLE_TAG}` = 'run'",
                                        max_results=1)
        if found:
            self.parent_id = self._opened(found[0].info.run_id, True)
            return
        tags = {RUN_TAG: run_id, ROLE_TAG: "run"}
        if dataset:
            tags[DIGEST_TAG] = dataset["digest"]
        self.parent_id = self._opened(self.client.create_run(self.experiment_id, tags=run_tags(tags),
                                                             run_name=run_id).info.run_id, False)
        from mlflow.entities import Param

        params = [Param(k, v[:6000]) for k, v in flat_params(config).items()]
        for start in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.parent_id, params=params[start:start + 100])
        if dataset:
            self._log_dataset(dataset)

    def _log_dataset(self, dataset: dict) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        digest = dataset["digest"].partition(":")[2][:MLFLOW_DIGEST_CHARS]
        entry = Dataset(name=dataset["name"], digest=digest, source_type="gistnet",
                        source=json.dumps({"uri": dataset["source"]}),
                        profile=json.dumps({"digest": dataset["digest"], "method": dataset["method"],
                                            "images": dataset["images"], "skipped": dataset["skipped"]}))
        self.client.log_inputs(self.parent_id, [DatasetInput(entry, [InputTag("mlflow.data.context", "training")])])

    # ------------------------------------------------------------ units (child runs)

    def unit(self, name: str, model: str, fold: int | None) -> "UnitTracker":
        """The observer of one (fold, model) unit: its child run, found again on resume."""
        child = self._call(f"starting {name}", lambda: self._child(name, model, fold))
        return UnitTracker(self, child)

    def _child(self, name: str, model: str, fold: int | None) -> str:
        found = self.client.search_runs([self.experiment_id],
                                        f"tags.`{PARENT_TAG}` = '{self.parent_id}' and tags.`{UNIT_TAG}` = '{name}'",
                                        max_results=1)
        if found:
            return self._opened(found[0].info.run_id, True)
        tags = {PARENT_TAG: self.parent_id, UNIT_TAG: name, ROLE_TAG: "unit", "gistnet.model": model,
                "gistnet.fold": "holdout" if fold is None else str(fold)}
        return self._opened(self.client.create_run(self.experiment_id, tags=run_tags(tags), run_name=name).info.run_id,
                            False)

    # ------------------------------------------------------------ the finished run

    def finish(self, report: dict, files: dict[str, bytes], models: dict[str, "ModelToLog"]) -> None:
        """Log the final metrics and intervals, the report and figures (``files``: artifact path ->
        bytes) and each model (``models``: name -> what to register), then end the run."""
        self._call("logging the final metrics", lambda: self._final_metrics(report))
        self._call("logging the artifacts", lambda: self._artifacts(files))
        for name, model in models.items():
            self._call(f"logging model {name}", lambda: self._model(name, model))
        self._call("ending the run", lambda: self._ended(self.parent_id))
        if self.error:  # logging failed on the way: the runs end FAILED, with the reason
            self._end_open_runs(self.error)

    def _final_metrics(self, report: dict) -> None:
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        metrics = []
        for model, section in report["models"].items():
            named = {**section["metrics"], "roc_auc": section["roc_auc"]}
            for metric, m in named.items():
                for field, suffix in (("value", ""), ("ci_low", ".ci_low"), ("ci_high", ".ci_high")):
                    if m.get(field) is not None:
                        metrics.append(Metric(f"{model}.{metric}{suffix}", float(m[field]), now, 0))
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.parent_id, metrics=metrics[start:start + 1000])
        self.client.set_tag(self.parent_id, "gistnet.best_model", report["best_model"])
        self.client.set_tag(self.parent_id, "gistnet.status", report["status"])

    def _artifacts(self, files: dict[str, bytes]) -> None:
        with tempfile.TemporaryDirectory(prefix="gistnet-mlflow-") as tmp:
            for path, data in files.items():
                target = Path(tmp) / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            self.client.log_artifacts(self.parent_id, tmp)

    def _model(self, name: str, model: "ModelToLog") -> None:
        import mlflow
        import mlflow.pytorch
        import torch
        import torchvision

        registered = f"{self.cfg.model_prefix}-{name}"
        with self._active_parent(mlflow):
            info = mlflow.pytorch.log_model(
                model.module, name=name, registered_model_name=registered, input_example=model.example,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                  f"torchvision=={torchvision.__version__.split('+')[0]}"])
        version = str(info.registered_model_version)
        self._describe(registered, version, {"gistnet.format": "torch", **model.tags}, model.description)
        self.registered[name] = {"name": registered, "version": version}

    def _active_parent(self, mlflow):
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        return mlflow.start_run(run_id=self.parent_id)

    def _describe(self, registered: str, version: str, tags: dict[str, str], description: str) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(registered, version, key, str(value))
        if description:
            self.client.update_model_version(registered, version, description=description)

    # ------------------------------------------------------------ after the run: gistnet export

    def attach(self, parent_id: str) -> None:
        """Continue a finished run's parent run (its id from report.json), e.g. to add its ONNX model."""
        if not self.uri:
            return
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)

        def find():
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            self.experiment_id = self.client.get_run(parent_id).info.experiment_id
            self.parent_id = parent_id

        self._call(f"finding run {parent_id}", find)

    def log_onnx(self, name: str, path: Path, example: tuple, tags: dict[str, str], description: str,
                 torch_version: str | None) -> dict | None:
        """Log an exported ``model.onnx`` to the parent run with MLflow's onnx flavour and register it as
        a new version of ``<model_prefix>-<name>`` (tag ``gistnet.format: onnx``); the run's torch
        version (``torch_version``) and the ONNX version name each other in a tag. Returns
        ``{name, version}``, or None when tracking is off or failed. ``example``: (input array,
        {output name: array}), from which the version's signature is inferred."""
        def log():
            import mlflow
            import mlflow.onnx
            import onnx
            import onnxruntime
            from mlflow.models import infer_signature

            signature = infer_signature(*example)

            registered = f"{self.cfg.model_prefix}-{name}"
            with self._active_parent(mlflow):
                info = mlflow.onnx.log_model(
                    onnx.load(str(path)), name=f"{name}-onnx", registered_model_name=registered, signature=signature,
                    save_as_external_data=False,
                    pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"])
            version = str(info.registered_model_version)
            linked = {"gistnet.torch_version": torch_version} if torch_version else {}
            self._describe(registered, version, {"gistnet.format": "onnx", **tags, **linked}, description)
            if torch_version:
                self.client.set_model_version_tag(registered, torch_version, "gistnet.onnx_version", version)
            return {"name": registered, "version": version}

        return self._call(f"logging the ONNX model of {name}", log)


_STARTED: list[Tracker] = []  # the trackers of this process that started MLflow runs


def abort_open(reason: str) -> None:
    """The process is failing (pipeline.run): end ``FAILED`` every MLflow run this process started
    and has not ended, with ``reason``."""
    while _STARTED:
        _STARTED.pop().abort(reason)


@dataclass
class ModelToLog:
    """A trained model for the registry: the torch module, an input example (its batch of 2 keeps the
    exported graph's batch axis dynamic), model-version tags and a description."""

    module: object
    example: object
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""


class UnitTracker:
    """The training loop's observer for one unit (``train.Observer``): per-epoch metrics, step = epoch."""

    def __init__(self, tracker: Tracker, run_id: str | None):
        self.tracker, self.run_id = tracker, run_id

    def on_step(self, model_name: str, images: int) -> None:
        pass

    def on_epoch(self, model_name: str, record: dict, total_epochs: int) -> None:
        if self.run_id is None:
            return

        def log_epoch():
            from mlflow.entities import Metric
            import time

            now = int(time.time() * 1000)
            self.tracker.client.log_batch(self.run_id, metrics=[
                Metric(name, float(record[name]), now, int(record["epoch"]))
                for name in ("train_loss", "val_loss", "train_accuracy", "val_accuracy")])

        self.tracker._call(f"logging epoch {record['epoch']} of {model_name}", log_epoch)

    def finished(self) -> None:
        if self.run_id is not None:
            self.tracker._call("ending a unit", lambda: self.tracker._ended(self.run_id))
