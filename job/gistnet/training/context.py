"""One run's context: built once by ``pipeline.py`` and passed down to every unit, in place of
loose arguments and callbacks into the orchestrator."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from gistnet.config import Config
from gistnet.data.storage import Store
from gistnet.errors import Interrupted
from gistnet.observe.metrics import RunMetrics
from gistnet.observe.tracking import Tracker
from gistnet.training import distributed, train


@dataclass(frozen=True)
class RunContext:
    config: Config
    run_id: str
    out: Store  # the run's prefix: <output>/<run-id>
    metrics: RunMetrics
    stop: train.StopFlag
    world: distributed.World
    device: torch.device
    scratch: str  # local folder for temporary files
    environment: dict  # versions and hardware, recorded in each unit's result
    tracker: Tracker | None = None  # MLflow (observe/tracking.py); inactive when off or not rank 0

    @property
    def class_names(self) -> tuple[str, str]:
        """The endpoint's two sides for binary evidence: (positive, negative), or (positive, non-positive)."""
        return self.config.data.endpoint_classes

    @property
    def head_classes(self) -> tuple[str, ...]:
        """The class of each network output (``config.head_order``)."""
        return self.config.data.head_classes

    @contextlib.contextmanager
    def timed(self, stage: str, model: str = ""):
        """Add the wall time of a stage (or a piece of one) that completed to the metrics."""
        start = time.perf_counter()
        yield
        self.metrics.stage(stage, time.perf_counter() - start, model)

    def guard(self, what: str):
        """Running out of device memory in ``what`` becomes the device exit code, with advice."""
        return train.out_of_memory_is_a_device_error(what, self.config.train.batch_size, self.config.data.image_size)

    def stop_if_asked(self, where: str) -> None:
        """Raise ``Interrupted`` if SIGTERM came (on any rank: they all stop here together)."""
        if distributed.any_rank(self.stop.is_set(), self.world, self.device):
            raise Interrupted(f"stopped by {self.stop.signal_name or 'SIGTERM on another rank'} {where}")
