"""What a finished run sends to MLflow: its report, documents and figures as artifacts, and each
model to register: a hold-out run's network, or a k-fold (or leave-one-site-out) run's K fold
networks as one ensemble (the mean of their logits, so its logit margin is the mean of the fold
margins, as ``serving/ensemble.py`` scores); every weights file checked by sha256 against the
report. After the run, ``gistnet export`` adds the ONNX file (``log_onnx``). The tracker itself
(observe/tracking.py) sees only bytes, files and torch modules; this module reads them from the run."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from gistnet.config import Config
from gistnet.data.storage import Store, open_store
from gistnet.observe.tracking import ModelToLog, Tracker
from gistnet.serving import ensemble, export

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
    if tracker.enabled and final["status"] == "complete":
        models = _models(final, out, config, scratch)
    tracker.finish(final, files, models)
    final = {**final, "tracking": tracker.status()}
    out.write_bytes("report.json", json.dumps(final, indent=2).encode())
    tracker._call("logging report.json", lambda: tracker.client.log_text(
        tracker.parent_id, json.dumps(final, indent=2), "report.json"))
    if tracker.error:  # the last upload failed: the stored report says so
        final = {**final, "tracking": tracker.status()}
        out.write_bytes("report.json", json.dumps(final, indent=2).encode())
    return final


class FoldMean(torch.nn.Module):
    """A k-fold run's fold networks as one model: preprocessed images N x 3 x S x S -> the mean of the
    members' logits N x 2, whose margin (column 1 - column 0) is the mean of the fold margins. Same
    input and output as a hold-out network, so every version of ``<prefix>-<model>`` is called alike."""

    def __init__(self, networks: list[torch.nn.Module]):
        super().__init__()
        self.networks = torch.nn.ModuleList(networks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return ensemble.mean_logits(self.networks, images)


def _models(final: dict, out: Store, config: Config, scratch: str) -> dict[str, ModelToLog]:
    """Each model of the run, as MLflow registers it."""
    size = config.data.image_size
    # an example batch of 2: MLflow exports with torch.export, which would fix a batch of 1
    example = np.zeros((2, 3, size, size), dtype=np.float32)
    common = {"gistnet.run_id": final["run_id"], "gistnet.input": f"preprocessed float32 N x 3 x {size} x {size}"}
    models = {}
    for name in final["models"]:
        chosen = ensemble.run_model(final, name, out.uri)
        networks = ensemble.load_members(out, chosen, torch.device("cpu"), scratch)  # each sha256 checked
        if not chosen.is_ensemble:
            models[name] = ModelToLog(networks[0], example, {**common, "gistnet.kind": "single model (hold-out)",
                                                             "gistnet.weights_sha256": chosen.members[0].sha256})
            continue
        folds = len(chosen.members)
        tags = {**common, "gistnet.kind": f"ensemble of {folds} folds", "gistnet.folds": str(folds),
                "gistnet.threshold": f"{chosen.youden:.6g}",
                "gistnet.threshold_rule": "median of the folds' Youden thresholds (exploratory)",
                "gistnet.members": json.dumps([{"fold": m.fold, "sha256": m.sha256} for m in chosen.members])}
        description = (f"{name} of gistnet run {final['run_id']}: ensemble of {folds} folds (the mean of the fold "
                       f"networks' logits, so the logit margin is the mean of the fold margins); exploratory "
                       f"threshold P >= {chosen.youden:.4g}, the median of the folds' Youden thresholds.")
        models[name] = ModelToLog(FoldMean(networks).eval(), example, tags, description)
    return models


def log_onnx(run_uri: str, model: str, config: Config, scratch: str) -> dict | None:
    """``gistnet export`` with tracking on: log ``<model>/model.onnx`` to the run's MLflow parent run (its id
    from report.json) and register it as a version of ``<prefix>-<model>``. The outcome goes into the
    sidecar (``tracking``); a server that fails is warned about once (exit 5 with tracking.required)."""
    tracker = Tracker(config.tracking)
    if not tracker.uri:
        return None
    run = open_store(run_uri, config.storage)
    report = json.loads(run.read("report.json"))
    tracked = report.get("tracking") or {}
    if not tracked.get("mlflow_run_id"):
        log.warning("MLflow tracking is on but run %s was not tracked (report.json names no MLflow run): "
                    "the ONNX model is not logged", run.uri)
        return None
    tracker.attach(tracked["mlflow_run_id"])
    sidecar_key = f"{model}/{export.SIDECAR}"
    sidecar = json.loads(run.read(sidecar_key))
    logged = None
    if tracker.enabled:
        local = Path(tempfile.mkdtemp(prefix="gistnet-onnx-", dir=scratch)) / export.ONNX_FILE
        run.download_file(f"{model}/{export.ONNX_FILE}", local)
        size = sidecar["input"]["shape"][-1]
        images = np.zeros((2, 3, size, size), dtype=np.uint8)
        outputs = export.OnnxScorer.session(str(local), "cpu").run([export.OUTPUT, export.LOGITS], {export.INPUT: images})
        tags = {"gistnet.run_id": report["run_id"], "gistnet.weights_sha256": str(sidecar.get("weights_sha256")),
                "gistnet.onnx_sha256": sidecar["sha256"], "gistnet.opset": str(sidecar.get("opset")),
                "gistnet.kind": str(sidecar.get("scoring", "single model (hold-out)")),
                "gistnet.input": f"uint8 N x 3 x {size} x {size}"}
        description = (f"{model} of gistnet run {report['run_id']} as ONNX (gistnet export, opset "
                       f"{sidecar.get('opset')}): uint8 images in (normalisation inside), {export.OUTPUT} and "
                       f"{export.LOGITS} N x {len(sidecar['output']['columns'])} out (columns: "
                       f"{', '.join(sidecar['output']['columns'])}; the endpoint is the last, the positive class).")
        torch_version = ((tracked.get("models") or {}).get(model) or {}).get("version")
        logged = tracker.log_onnx(model, local, (images, {export.OUTPUT: outputs[0], export.LOGITS: outputs[1]}),
                                  tags, description, torch_version)
        shutil.rmtree(local.parent, ignore_errors=True)
    status = tracker.status()
    sidecar["tracking"] = {"status": status["status"], "mlflow_run_id": tracked["mlflow_run_id"],
                           "registered_model": logged, **({"error": status["error"]} if tracker.error else {})}
    run.write_bytes(sidecar_key, json.dumps(sidecar, indent=2).encode())
    return sidecar["tracking"]
