"""A run's layout in the output store: its (fold, model) units and where each one's objects live.

A run is a set of (fold, model) units: one fold (``None``) per model for the hold-out, k
folds per model for k-fold. Each unit writes only under its own prefix (``<model>/`` for
the hold-out, ``folds/<i>/<model>/`` for fold i): weights, checkpoints,
``predictions.csv`` and, last, ``result.json``, whose presence marks the unit finished.
So processes that share a run id and train different folds (or models) never write the
same object, and any of them, or ``gistnet aggregate``, can pool the finished units into
the report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from gistnet.config import Config
from gistnet.data import split
from gistnet.data.storage import Store
from gistnet.errors import ConfigError

RESULT = "result.json"
DATASET = "dataset.json"


@dataclass(frozen=True)
class Unit:
    fold: int | None  # None: the hold-out
    model: str

    @property
    def prefix(self) -> str:
        return "" if self.fold is None else f"folds/{self.fold}/"

    def key(self, name: str) -> str:
        return f"{self.prefix}{self.model}/{name}"

    def store(self, out: Store) -> Store:
        """Where checkpoint.py writes this unit's ``<model>/...`` objects."""
        return out if self.fold is None else out.child(f"folds/{self.fold}")

    def name(self) -> str:
        return unit_name(self.to_dict())

    def to_dict(self) -> dict:
        return {"fold": self.fold, "model": self.model}


def units(folds: list[int | None], models) -> list[Unit]:
    return [Unit(fold, model) for fold in folds for model in models]


def all_units(config: Config) -> list[Unit]:
    return units(split.select_folds(None, config.split), config.train.models)


# Set by a Kubernetes Indexed Job in each pod: 0 .. completions - 1.
COMPLETION_INDEX = "JOB_COMPLETION_INDEX"


def select(fold: str | None, model: str | None, config: Config, environ=os.environ) -> list[Unit]:
    """The units this process trains: every one, those of one fold and/or one model, or, with
    ``fold == "auto"``, the one an Indexed Job's completion index names (``fold = index % K``,
    ``model = index // K``, K = the number of folds, 1 for a hold-out)."""
    if fold == "auto":
        if model:
            raise ConfigError("--fold auto picks the model from JOB_COMPLETION_INDEX too; drop --model")
        return [unit_of_index(environ.get(COMPLETION_INDEX), config)]
    models = list(config.train.models)
    if model:
        if model not in models:
            raise ConfigError(f"--model {model} is not one of this run's train.models ({', '.join(models)})")
        models = [model]
    return units(split.select_folds(fold, config.split), models)


def unit_of_index(index: str | None, config: Config) -> Unit:
    folds = split.select_folds(None, config.split)
    total = len(folds) * len(config.train.models)
    if index is None or not index.strip():
        raise ConfigError(f"--fold auto needs {COMPLETION_INDEX} (set by a Kubernetes Indexed Job); "
                          f"this run has {total} (fold, model) units: pass --fold and --model instead")
    try:
        i = int(index)
    except ValueError:
        raise ConfigError(f"{COMPLETION_INDEX}={index!r} is not an integer") from None
    if not 0 <= i < total:
        raise ConfigError(f"{COMPLETION_INDEX}={i} is out of range: {len(folds)} fold(s) x "
                          f"{len(config.train.models)} model(s) give indexes 0..{total - 1} (the Job's completions)")
    return Unit(folds[i % len(folds)], config.train.models[i // len(folds)])


def is_finished(out: Store, unit: Unit) -> bool:
    return out.exists(unit.key(RESULT))


def unit_name(unit: dict) -> str:
    """A (fold, model) unit of ``evaluation.finished``/``missing`` in words: "resnet50 fold 2",
    or "resnet50" for a hold-out (fold ``None``)."""
    return unit["model"] if unit["fold"] is None else f"{unit['model']} fold {unit['fold']}"


def gradcam_key(unit: Unit) -> str:
    return f"{unit.prefix}gradcam-{unit.model}.png"
