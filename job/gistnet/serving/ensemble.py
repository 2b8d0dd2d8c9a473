"""A finished run's model as something that scores images: the hold-out's one network, or a
k-fold (or leave-one-site-out) run's K fold networks as an ensemble, the mean of their logit
margins (the way nnU-Net predicts with its five fold models).

Every weights file is checked against the sha256 the run's report names before it is used.
The development figures travel with it: the validation (hold-out) or pooled out-of-fold
(k-fold) metrics, and the exploratory Youden threshold (the hold-out's, or the median of the
folds' thresholds), frozen: external data never chooses a threshold.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from gistnet.data.storage import Store
from gistnet.errors import ModelError
from gistnet.serving import trained
from gistnet.training import train

WEIGHTS = "model.safetensors"


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
    kind: str  # "single model (hold-out)" | "ensemble of K fold models (mean logit margin)"

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1


def run_model(report: dict, name: str, run_uri: str) -> RunModel:
    section = report["models"].get(name)
    if section is None:
        raise ModelError(f"run {run_uri} has no model {name!r} (it trained: {', '.join(report.get('models', {}))})")
    youden_values = section.get("thresholds", {}).get("youden", {}).get("values") or [0.5]
    if "checkpoint" in section:
        return RunModel(name, (Member(f"{name}/{WEIGHTS}", section["checkpoint"]["sha256"], None),), section,
                        float(youden_values[0]), "single model (hold-out)")
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
    return [trained.verified_network(run, member.key, member.sha256, model.name, scratch).to(device)
            for member in model.members]


class EnsembleScorer(torch.nn.Module):
    """uint8 N x 3 x S x S -> the mean logit margin (positive - negative) of the members, N."""

    def __init__(self, networks: list[torch.nn.Module], device: torch.device):
        super().__init__()
        self.networks = torch.nn.ModuleList(networks)
        self.preprocess = train.Preprocess(device)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        margins = []
        for network in self.networks:
            logits = network(x).float()
            margins.append(logits[:, 1] - logits[:, 0])
        return torch.stack(margins).mean(dim=0)
