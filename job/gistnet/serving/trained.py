"""A finished run's model, ready to use: the run's own saved configuration, the chosen
model, its weights checked against the sha256 in the run's report, and the scoring
module (training's exact preprocessing, the network, softmax).

``predict.py`` scores images with it and ``export.py`` turns it into ONNX; neither
re-types the preprocessing: both go through ``train.Preprocess`` on images decoded by
``dataset.decode_image``, as training did.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from gistnet import config as config_mod
from gistnet import models
from gistnet.training import train
from gistnet.config import Config, StorageConfig
from gistnet.errors import ModelError
from gistnet.data.storage import Store, open_store, sha256_file

WEIGHTS = "model.safetensors"
POINTER = "production.json"  # <registry>/production.json: the model in production (ops/promotion.py writes it)
PRODUCTION = "production"  # --run production --registry URI
DEFAULT_THRESHOLD = 0.5  # the threshold every run pre-specifies (evaluate.diagnostic_report)


@dataclass(frozen=True)
class TrainedModel:
    """One model of a complete run, as its report describes it."""

    run: Store
    run_id: str
    report: dict
    config: Config  # the run's saved config.yaml
    name: str  # resnet34 | resnet50
    sha256: str  # of <name>/model.safetensors, from the report

    @property
    def result(self) -> dict:
        return self.report["models"][self.name]

    @property
    def threshold(self) -> float:
        return float(self.result.get("threshold", DEFAULT_THRESHOLD))

    @property
    def image_size(self) -> int:
        return self.config.data.image_size

    @property
    def class_names(self) -> tuple[str, str]:
        """(positive, negative), as the run was trained."""
        return self.config.data.positive_class, self.config.data.negative_class

    def key(self, filename: str) -> str:
        return f"{self.name}/{filename}"


def open_run(uri: str, model: str, storage: StorageConfig) -> TrainedModel:
    """The run at ``uri`` and its model ``model`` (or ``best``); ModelError when there is no
    such run or model, or the run is not complete. Nothing is downloaded but JSON and YAML."""
    run = open_store(uri, storage)
    report = _read_json(run, "report.json")
    if report is None:
        if run.exists("config.yaml"):
            raise ModelError(f"run {run.uri} is not complete (no report.json yet): wait for it to finish or "
                             "resume it with the same --run-id")
        raise ModelError(f"no gistnet run at {run.uri} (neither report.json nor config.yaml found)")
    if report.get("status") != "complete":
        raise ModelError(f"run {run.uri} is not complete (report status {report.get('status')!r})")
    name = report["best_model"] if model == "best" else model
    if name not in report.get("models", {}):
        raise ModelError(f"run {run.uri} has no model {name!r} (it trained: {', '.join(report.get('models', {}))})")
    if "checkpoint" not in report["models"][name]:
        raise ModelError(f"run {run.uri} is a {report.get('evaluation', {}).get('folds')}-fold cross-validation: it "
                         f"holds one {name} per fold, none of them the model to use; train a hold-out run "
                         "(--split holdout) for predict or export")
    try:
        text = run.read("config.yaml").decode()
    except FileNotFoundError:
        raise ModelError(f"run {run.uri} has no config.yaml: its preprocessing is unknown") from None
    cfg = config_mod.load_saved(text, run.uri_of("config.yaml"))
    return TrainedModel(run, report["run_id"], report, cfg, name, report["models"][name]["checkpoint"]["sha256"])


def read_pointer(registry: Store) -> tuple[dict | None, str | None]:
    """The production pointer and its ETag, or (None, None) when nothing was promoted yet.
    A pointer that is not valid JSON or lacks a field is a ModelError naming the key."""
    try:
        data, etag = registry.read_with_etag(POINTER)
    except FileNotFoundError:
        return None, None
    try:
        pointer = json.loads(data)
    except ValueError:
        raise ModelError(f"{registry.uri_of(POINTER)} is not valid JSON; fix or remove the production pointer") from None
    missing = [f for f in ("run_uri", "model", "sha256", "run_id") if not isinstance(pointer, dict) or f not in pointer]
    if missing:
        raise ModelError(f"{registry.uri_of(POINTER)} is malformed: no {', '.join(missing)}") from None
    return pointer, etag


def resolve(run: str, model: str, registry: str | None, storage: StorageConfig) -> tuple[str, str]:
    """``--run production --registry URI`` -> the promoted run's URI and model; any other ``run``
    is returned as given. ModelError (exit 9) when there is no pointer yet."""
    if run != PRODUCTION:
        return run, model
    if not registry:
        raise ModelError("--run production needs --registry URI (where production.json is)")
    store = open_store(registry, storage)
    pointer, _ = read_pointer(store)
    if pointer is None:
        raise ModelError(f"no production model: {store.uri_of(POINTER)} does not exist (nothing promoted yet; "
                         "run gistnet promote)")
    return pointer["run_uri"], pointer["model"] if model == "best" else model


def _read_json(store: Store, key: str) -> dict | None:
    try:
        return json.loads(store.read(key))
    except FileNotFoundError:
        return None
    except ValueError:
        raise ModelError(f"{store.uri_of(key)} is not valid JSON") from None


def fetch(trained: TrainedModel, filename: str, scratch: str) -> Path:
    """Download ``<model>/<filename>`` to a fresh folder under ``scratch``; ModelError if missing."""
    if not trained.run.exists(trained.key(filename)):
        raise ModelError(f"{trained.run.uri_of(trained.key(filename))} does not exist")
    local = Path(tempfile.mkdtemp(prefix="gistnet-model-", dir=scratch)) / filename
    trained.run.download_file(trained.key(filename), local)
    return local


def load_weights(trained: TrainedModel, scratch: str) -> torch.nn.Module:
    """The model with its final weights, after checking their sha256 against the report."""
    return verified_network(trained.run, trained.key(WEIGHTS), trained.sha256, trained.name, scratch)


def verified_network(run: Store, key: str, sha256: str, name: str, scratch: str) -> torch.nn.Module:
    """Network ``name`` with the weights stored at ``key`` of ``run``, once their sha256 is the
    one ``report.json`` recorded; ModelError naming the object otherwise."""
    if not run.exists(key):
        raise ModelError(f"{run.uri_of(key)} does not exist")
    path = Path(tempfile.mkdtemp(prefix="gistnet-model-", dir=scratch)) / WEIGHTS
    run.download_file(key, path)
    digest = sha256_file(path)
    if digest != sha256:
        path.unlink()
        raise ModelError(f"{run.uri_of(key)}: sha256 {digest[:12]}... does not match the {sha256[:12]}... in "
                         "report.json; refusing to use these weights")
    model = models.build_model(name)
    model.load_state_dict(models.load_state_dict_file(str(path)), strict=True)
    path.unlink()
    return model.eval()


class Scorer(torch.nn.Module):
    """uint8 N x 3 x S x S images (``dataset.decode_image`` output) -> class probabilities
    N x 2 (column 1: the positive class), exactly as ``evaluate.predict`` computes them."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        super().__init__()
        self.model = model
        self.preprocess = train.Preprocess(device)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The fp32 logits N x 2: their difference ranks images where the softmax saturates."""
        return self.model(self.preprocess(images)).float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).softmax(dim=1)
