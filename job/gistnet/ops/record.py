"""What a finished run sends to MLflow: its report, documents and figures as artifacts, and each
hold-out model (the weights its report names, checked by sha256) to register. The tracker itself
(observe/tracking.py) sees only bytes and torch modules; this module reads them from the run."""

from __future__ import annotations

import json
import logging

import numpy as np

from gistnet.config import Config
from gistnet.data.storage import Store
from gistnet.observe.tracking import Tracker
from gistnet.serving import trained

log = logging.getLogger(__name__)

DOCUMENTS = ("report.html", "checklist.md", "report.md")


def _figures(report: dict, out: Store) -> dict[str, str]:
    """Artifact path -> stored key of every figure the report lists."""
    root = out.uri.rstrip("/") + "/"
    return {f"figures/{name}.png": uri[len(root):] for name, uri in report.get("artifacts", {}).items()
            if uri.endswith(".png") and uri.startswith(root)}


def finish(tracker: Tracker, out: Store, final: dict, config: Config, scratch: str) -> dict:
    """Log the finished run, then record the tracking outcome in report.json (rewritten only when
    tracking is on). Returns the report as stored."""
    if not tracker.uri:
        return final
    files = {}
    if tracker.enabled:
        files = {name: out.read(name) for name in DOCUMENTS if out.exists(name)}
        files.update({path: out.read(key) for path, key in _figures(final, out).items() if out.exists(key)})
    models = {}
    if tracker.enabled and final["status"] == "complete" and config.split.method == "holdout":
        size = config.data.image_size
        for name in final["models"]:
            model = trained.load_weights(trained.open_run(out.uri, name, config.storage), scratch)
            # an example batch of 2: MLflow exports with torch.export, which would fix a batch of 1
            models[name] = (model, np.zeros((2, 3, size, size), dtype=np.float32))
    tracker.finish(final, files, models)
    final = {**final, "tracking": tracker.status()}
    out.write_bytes("report.json", json.dumps(final, indent=2).encode())
    tracker._call("logging report.json", lambda: tracker.client.log_text(
        tracker.parent_id, json.dumps(final, indent=2), "report.json"))
    if tracker.error:  # the last upload failed: the stored report says so
        final = {**final, "tracking": tracker.status()}
        out.write_bytes("report.json", json.dumps(final, indent=2).encode())
    return final
