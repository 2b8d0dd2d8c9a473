"""A finished run's model as something that scores images: the hold-out's one network, or a
k-fold (or leave-one-site-out) run's K fold networks as an ensemble, the mean of their logit
margins (the way nnU-Net predicts with its five fold models).

Every weights file is checked against the sha256 the run's report names before it is used.
The development figures travel with it: the validation (hold-out) or pooled out-of-fold
(k-fold) metrics, and the exploratory Youden threshold (the hold-out's, or the median of the
folds' thresholds), frozen: external data never chooses a threshold.
"""

from __future__ import annotations

import hashlib
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from gistnet import models
from gistnet.evidence import evaluate
from gistnet.data.storage import Store, sha256_file
from gistnet.errors import ModelError
from gistnet.training import train

WEIGHTS = "model.safetensors"
SINGLE = "single model (hold-out)"


@dataclass(frozen=True)
class Member:
    key: str  # of the weights under the run
    sha256: str
    fold: int | None


@dataclass(frozen=True)
class RunModel:
    """One architecture of a finished run, as it scores new images."""

    name: str
    members: tuple[Member, ...]
    development: dict  # the report's section of this model
    youden: float
    kind: str  # "single model (hold-out)" | "ensemble of K fold models (mean logit margin); ..."

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1

    @property
    def scoring(self) -> str:
        """One line for predictions: "single model (hold-out)" or "ensemble of K fold models (mean logit margin)"."""
        return f"ensemble of {len(self.members)} fold models (mean logit margin)" if self.is_ensemble else SINGLE

    @property
    def sha256(self) -> str:
        """The weights' identity: a single model's weights sha256; for an ensemble, the sha256 of its
        members' weights sha256s in fold order, one per line (``members_digest``)."""
        return members_digest(self.members) if self.is_ensemble else self.members[0].sha256

    def weights(self) -> list[dict]:
        """Each member's weights, as predictions.json, the ONNX sidecar and the external report list them."""
        return [{"key": m.key, "sha256": m.sha256, "fold": m.fold} for m in self.members]


def members_digest(members: tuple[Member, ...]) -> str:
    """sha256 over the members' weights sha256s (fold order, each followed by a newline)."""
    return hashlib.sha256("".join(f"{m.sha256}\n" for m in members).encode("ascii")).hexdigest()


def run_model(report: dict, name: str, run_uri: str) -> RunModel:
    section = report["models"].get(name)
    if section is None:
        raise ModelError(f"run {run_uri} has no model {name!r} (it trained: {', '.join(report.get('models', {}))})")
    youden_values = section.get("thresholds", {}).get("youden", {}).get("values") or [0.5]
    if "checkpoint" in section:
        return RunModel(name, (Member(f"{name}/{WEIGHTS}", section["checkpoint"]["sha256"], None),), section,
                        float(youden_values[0]), SINGLE)
    folds = section.get("folds") or []
    if not folds:
        raise ModelError(f"run {run_uri}: model {name} has neither a checkpoint nor folds in report.json")
    members = tuple(Member(f"folds/{f['fold']}/{name}/{WEIGHTS}", f["checkpoint"]["sha256"], f["fold"]) for f in folds)
    youden = statistics.median(float(f["youden_threshold"]) for f in folds)
    return RunModel(name, members, section, youden,
                    f"ensemble of {len(members)} fold models (mean logit margin); exploratory threshold: the median "
                    "of the folds' Youden thresholds")


def load_members(run: Store, model: RunModel, device: torch.device, scratch: str) -> list[torch.nn.Module]:
    """Every member network, each after checking its weights' sha256 against the report."""
    return [verified_network(run, member.key, member.sha256, model.name, scratch).to(device)
            for member in model.members]


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
    state = models.load_state_dict_file(str(path))
    network = models.build_model(name, num_classes=int(state["fc.weight"].shape[0]) if "fc.weight" in state else 2)
    network.load_state_dict(state, strict=True)
    path.unlink()
    return network.eval()


def mean_logits(networks, x: torch.Tensor) -> torch.Tensor:
    """The members' fp32 logits N x 2 on the preprocessed batch ``x``, averaged: their margin is the
    mean of the members' margins."""
    return torch.stack([network(x).float() for network in networks]).mean(dim=0)


class EnsembleScorer(torch.nn.Module):
    """uint8 N x 3 x S x S -> the mean logit margin (positive - negative) of the members, N.

    ``logits`` gives the mean of the members' logits N x 2, whose difference is that mean margin
    and whose softmax is its sigmoid: what ``gistnet export`` writes into one ONNX graph."""

    def __init__(self, networks: list[torch.nn.Module], device: torch.device):
        super().__init__()
        self.networks = torch.nn.ModuleList(networks)
        self.preprocess = train.Preprocess(device)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return mean_logits(self.networks, self.preprocess(images))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.margins_and_logits(images)[0]

    @torch.no_grad()
    def margins_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ensemble's endpoint margin (N) and the mean of the members' logits (N x K), in one pass.

        Two classes: the mean of the members' margins (logit_1 - logit_0), as always. K > 2: the
        endpoint margin of the mean logits, the score ``predict`` and the exported ONNX graph give
        (the margin is not linear in the logits there, so a mean of margins would rank differently)."""
        x = self.preprocess(images)
        margins, all_logits = [], []
        for network in self.networks:
            logits = network(x).float()
            margins.append(evaluate.endpoint_scores(logits)[1])
            all_logits.append(logits)
        mean = torch.stack(all_logits).mean(dim=0)
        if mean.shape[1] > 2:
            return evaluate.endpoint_scores(mean)[1], mean
        return torch.stack(margins).mean(dim=0), mean
