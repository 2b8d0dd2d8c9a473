"""A finished run's model, ready to use: the run's own saved configuration, the chosen
model, its weights checked against the sha256 in the run's report, and the scoring
module (training's exact preprocessing, the network, softmax).

A hold-out run's model is one network; a k-fold (or leave-one-site-out) run's model is the
ensemble of its K fold networks (``ensemble.run_model``: the mean of their logit margins, every
fold's weights checked), as ``gistnet evaluate`` scores it.

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
from gistnet.training import train
from gistnet.config import Config, StorageConfig
from gistnet.errors import ModelError
from gistnet.data.storage import Store, open_store
from gistnet.serving import ensemble

WEIGHTS = ensemble.WEIGHTS
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
    scoring: ensemble.RunModel  # its weights: one network (hold-out) or the K fold networks (k-fold, site)

    @property
    def sha256(self) -> str:
        """Of <name>/model.safetensors, from the report; for a fold ensemble, the digest of its
        members' sha256s (``ensemble.members_digest``)."""
        return self.scoring.sha256

    @property
    def is_ensemble(self) -> bool:
        return self.scoring.is_ensemble

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
        """(positive, negative), as the run was trained; with K classes (positive, non-positive)."""
        return self.config.data.endpoint_classes

    @property
    def head_classes(self) -> tuple[str, ...]:
        """The class of each network output (``classes.head_order``: the positive class last)."""
        return self.config.data.head_classes

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
    scoring = ensemble.run_model(report, name, run.uri)  # a k-fold run: its fold ensemble
    try:
        text = run.read("config.yaml").decode()
    except FileNotFoundError:
        raise ModelError(f"run {run.uri} has no config.yaml: its preprocessing is unknown") from None
    cfg = config_mod.load_saved(text, run.uri_of("config.yaml"))
    return TrainedModel(run, report["run_id"], report, cfg, name, scoring)


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
    open_production(store, pointer, storage)
    return pointer["run_uri"], pointer["model"] if model == "best" else model


def open_production(registry: Store, pointer: dict, storage: StorageConfig) -> TrainedModel:
    """The model ``production.json`` (``pointer``, read from ``registry``) promoted, after checking
    that its run's weights are still the promoted ones: ModelError (exit 9) naming the pointer when
    the run is gone or incomplete, or was re-trained or edited after its promotion (its sha256 is
    not the pointer's). ``--run production`` and the promotion gate's champion both go through it."""
    where = registry.uri_of(POINTER)
    try:
        promoted = open_run(pointer["run_uri"], pointer["model"], storage)
    except ModelError as exc:
        raise ModelError(f"{where} promoted {pointer['model']} of {pointer['run_uri']}, but {exc}") from None
    if promoted.sha256 != pointer["sha256"]:  # the run was re-trained or edited after its promotion
        raise ModelError(f"{where} promoted {pointer['model']} of {pointer['run_uri']} with sha256 "
                         f"{str(pointer['sha256'])[:12]}..., but that run's report now gives {promoted.sha256[:12]}...: "
                         "the run changed after its promotion; promote it again or restore the pointer")
    return promoted


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
    """A hold-out model with its final weights, after checking their sha256 against the report."""
    if trained.is_ensemble:
        raise ModelError(f"run {trained.run.uri}: {trained.name} is an ensemble of {len(trained.scoring.members)} "
                         "fold models, not one network")
    member = trained.scoring.members[0]
    return ensemble.verified_network(trained.run, member.key, member.sha256, trained.name, scratch)


def scorer(trained: TrainedModel, device: torch.device, scratch: str) -> torch.nn.Module:
    """The model's scoring module, every weights file checked (``ensemble.load_members``): a
    ``Scorer`` around a hold-out's network, or an ``ensemble.EnsembleScorer`` of the K fold
    networks. Both have ``logits(images)`` (an ensemble's: the mean of its members' logits)."""
    networks = ensemble.load_members(trained.run, trained.scoring, device, scratch)
    if device.type == "cuda":
        networks = [n.to(memory_format=torch.channels_last) for n in networks]
    if trained.is_ensemble:
        return ensemble.EnsembleScorer(networks, device).eval()
    return Scorer(networks[0], device).eval()


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
