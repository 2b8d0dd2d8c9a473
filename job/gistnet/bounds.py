"""The allowed range of every numeric config key, in one table: ``config.validate`` enforces
it, docs/configuration.md shows it and the Helm chart's values.schema.json carries it."""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Bound:
    """The allowed range of a numeric key; ``None`` is unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: the low end itself is excluded
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def json_schema(self) -> dict[str, float]:
        """The same range as JSON Schema (draft 7) keywords, for the Helm chart's values.schema.json."""
        out: dict[str, float] = {}
        if self.low is not None:
            out["exclusiveMinimum" if self.low_open else "minimum"] = self.low
        if self.high is not None:
            out["exclusiveMaximum" if self.high_open else "maximum"] = self.high
        return out

    def phrase(self) -> str:
        """For an error message: ``>= 16`` or ``in [0, 65535]``."""
        return self.describe() if self.low is None or self.high is None else f"in {self.describe()}"

    def describe(self) -> str:
        """``>= 16``, ``> 0``, ``[0, 65535]``, ``(0, 1)``: what docs/configuration.md shows."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return (f"{'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                f"{')' if self.high_open else ']'}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# Every numeric key's range, in one place: validate() enforces it, docs/configuration.md shows it.
BOUNDS: dict[tuple[str, str], Bound] = {
    ("data", "image_size"): Bound(16),
    ("split", "folds"): Bound(2),
    ("split", "val_fraction"): Bound(0, 1, low_open=True, high_open=True),
    ("data", "min_images_per_class"): Bound(2),
    ("data", "download_threads"): Bound(1),
    ("data", "max_image_pixels"): Bound(1),
    ("augmentation", "rotation_degrees"): Bound(0, 180),
    ("augmentation", "clahe_clip_limit"): Bound(0, low_open=True),
    ("augmentation", "clahe_grid"): Bound(1),
    ("augmentation", "log_gain"): Bound(0, low_open=True),
    ("augmentation", "sigmoid_cutoff"): Bound(0, 1),
    ("augmentation", "sigmoid_gain"): Bound(0, low_open=True),
    ("augmentation", "online_probability"): Bound(0, 1),
    ("train", "epochs"): Bound(1),
    # BatchNorm cannot train on one image, and every step is a full batch (the last partial one is dropped).
    ("train", "batch_size"): Bound(2),
    ("train", "learning_rate"): Bound(0, low_open=True),
    ("train", "weight_decay"): Bound(0),
    ("train", "momentum"): Bound(0, 1, high_open=True),
    ("train", "seed"): Bound(0, 2**32 - 1),  # scikit-learn's random_state range
    ("train", "checkpoint_every"): Bound(0),
    ("train", "checkpoint_interval_s"): Bound(0),
    ("evaluate", "confidence_level"): Bound(0.5, 1, low_open=True, high_open=True),
    ("evaluate", "min_subgroup"): Bound(1),
    ("explain", "max_misclassified"): Bound(0),
    ("explain", "correct_per_class"): Bound(0),
    ("output", "lease_ttl_s"): Bound(1, 3600),
    ("storage", "max_attempts"): Bound(1),
    ("storage", "connect_timeout"): Bound(0, low_open=True),
    ("storage", "read_timeout"): Bound(0, low_open=True),
    ("storage", "multipart_threshold_mb"): Bound(5, 5120),  # S3's smallest and largest part
    ("metrics", "port"): Bound(0, 65535),
    ("distributed", "timeout_s"): Bound(1),
    ("distributed", "master_wait_s"): Bound(0),
    # a margin of 0 is superiority-or-equal; beyond 0.2 AUC "non-inferior" no longer means anything
    ("promotion", "auc_margin"): Bound(0, 0.2),
    ("promotion", "alpha"): Bound(0, 0.5, low_open=True, high_open=True),
    ("promotion", "max_calibration_shift"): Bound(0, 1, low_open=True),
}

BOUND_HINTS = {
    ("split", "folds"): " (k-fold needs at least two folds)",
    ("train", "batch_size"): " (BatchNorm cannot train on a batch of one)",
    ("train", "checkpoint_every"): " (0: only on SIGTERM and at the end)",
    ("train", "checkpoint_interval_s"): " (0: no time-based checkpoints)",
    ("storage", "multipart_threshold_mb"): " (S3's part size limits, in MiB)",
    ("promotion", "auc_margin"): " (the largest AUC loss still called non-inferior)",
}


def _json_type(typ: Any) -> dict[str, Any]:
    if typ is bool:
        return {"type": "boolean"}
    if typ is int:
        return {"type": "integer"}
    if typ is float:
        return {"type": "number"}
    if typ is str:
        return {"type": "string"}
    if typing.get_origin(typ) is tuple:
        return {"type": "array", "items": {"type": "string"}}
    return {"type": "object", "additionalProperties": {"type": "string"}}


def config_schema(leaf_keys: list[tuple[str, str, Any]]) -> dict[str, Any]:
    """JSON Schema of a config file: each (section, key, type) with its type and, where it has
    one, its bound (what the Helm chart's values.schema.json carries)."""
    sections: dict[str, Any] = {}
    for section, key, typ in leaf_keys:
        body = sections.setdefault(section, {"type": "object", "additionalProperties": False, "properties": {}})
        body["properties"][key] = {**_json_type(typ), **(BOUNDS[section, key].json_schema() if (section, key) in BOUNDS else {})}
    return {"type": "object", "additionalProperties": False, "properties": sections,
            "description": "gistnet configuration; see docs/configuration.md"}
