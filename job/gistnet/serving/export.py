"""``gistnet export --format onnx``: a trained model as a portable ONNX file, and the
ONNX Runtime scorer ``gistnet predict --engine onnx`` uses.

The exported graph is ``trained.Scorer``: it takes the uint8 N x 3 x S x S images that
``dataset.decode_image`` produces and returns the softmax probabilities N x 2 (column 1
the positive class) and, as a second output, the logits N x 2 (``predict`` ranks on their
difference, which does not saturate), so training's normalisation travels inside the file. The batch axis
is dynamic. The exporter is torch's ``torch.export``-based one (``dynamo=True``, the
default since torch 2.9; it needs onnxscript): the TorchScript exporter is deprecated.

A k-fold (or leave-one-site-out) run's model is exported as one graph of its K fold networks
(``ensemble.EnsembleScorer``): the logits output is the mean of theirs, so its margin is the
mean logit margin ``gistnet evaluate`` and ``predict`` score with, and the probabilities are
its softmax. It goes to ``<model>/model.onnx`` under the run root; its sidecar lists the K
members' weights (key, fold, sha256) and its ``weights_sha256`` is their digest
(``ensemble.members_digest``), both checked against report.json before scoring.

``<model>/model.onnx`` carries in its metadata the sha256 of the weights it was made
from; ``<model>/model.onnx.json`` (the sidecar) records the opset, versions, the file's
own sha256 and the check against torch made at export time. Before scoring, ``predict
--engine onnx`` checks the sidecar against the run (run id, model, weights sha256 in
report.json) and the downloaded file against the sidecar's sha256, then the metadata: a
file changed after export (its weights edited, its metadata left alone) is refused.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

import gistnet
from gistnet.evidence import evaluate
from gistnet.serving import trained as trained_mod
from gistnet.errors import DeviceError, ModelError
from gistnet.data.storage import sha256_file

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
SIDECAR = "model.onnx.json"
OPSET = 18
INPUT, OUTPUT, LOGITS = "images", "probabilities", "logits"
TOLERANCE = 1e-4  # max abs difference of probabilities, ONNX Runtime vs torch


def export_onnx(model: trained_mod.TrainedModel, scratch: str, opset: int = OPSET) -> dict:
    """Write ``<model>/model.onnx`` and its sidecar (under the run root's ``<model>/``, beside a
    hold-out's weights); returns the sidecar."""
    scorer = trained_mod.scorer(model, torch.device("cpu"), scratch)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        path = Path(tmp) / ONNX_FILE
        _export(scorer, model.image_size, path, opset)
        _add_metadata(path, model, opset)
        difference = _check_against_torch(scorer, path, model.image_size)
        sidecar = {
            "format": "onnx", "opset": opset, "file": ONNX_FILE, "sha256": sha256_file(path),
            "bytes": os.path.getsize(path), "input": {"name": INPUT, "dtype": "uint8",
                                                      "shape": ["batch", 3, model.image_size, model.image_size]},
            "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch", len(model.config.data.head_classes)],
                       "columns": list(model.config.data.head_classes)},
            "logits": {"name": LOGITS, "dtype": "float32", "shape": ["batch", len(model.config.data.head_classes)],
                       "columns": list(model.config.data.head_classes)},
            **_endpoint(model),
            "run_id": model.run_id, "model": model.name, "weights_sha256": model.sha256,
            "scoring": model.scoring.scoring, "members": model.scoring.weights(),
            "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
            "gistnet_version": gistnet.__version__,
            "check": {"inputs": "4 random uint8 images", "max_abs_difference_vs_torch": difference},
        }
        model.run.upload_file(model.key(ONNX_FILE), path, sha256=sidecar["sha256"])
    model.run.write_bytes(model.key(SIDECAR), json.dumps(sidecar, indent=2).encode())
    log.info("%s: exported %s (opset %d, max abs difference vs torch %.2e)", model.name,
             model.run.uri_of(model.key(ONNX_FILE)), opset, difference)
    return sidecar


def _endpoint(model: trained_mod.TrainedModel) -> dict:
    """The sidecar's class names and endpoint with K classes; nothing new for two (the sidecar of a
    two-class run stays as it was: its columns already name both classes)."""
    head = model.config.data.head_classes
    if len(head) == 2:
        return {}
    return {"classes": list(head), "endpoint": {
        "positive_class": head[-1], "column": len(head) - 1,
        "probability": f"P({head[-1]}) = column {len(head) - 1} of {OUTPUT} (the softmax mass of {head[-1]})",
        "score": f"log P({head[-1]}) - log P(every other class), from {LOGITS}: ranks the images (ROC AUC)"}}


class _Graph(torch.nn.Module):
    """What the file computes: ``Scorer``'s probabilities and the logits behind them (an
    ``EnsembleScorer``'s: the mean of its members' logits, and their softmax)."""

    def __init__(self, scorer: torch.nn.Module):
        super().__init__()
        self.scorer = scorer

    def forward(self, images: torch.Tensor):
        logits = self.scorer.logits(images)
        return logits.softmax(dim=1), logits


def _export(scorer: torch.nn.Module, size: int, path: Path, opset: int) -> None:
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    program = torch.onnx.export(_Graph(scorer).eval(), (example,), dynamo=True, opset_version=opset, input_names=[INPUT],
                                output_names=[OUTPUT, LOGITS],
                                dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                                external_data=False, verbose=False)
    program.save(str(path), external_data=False)


def _add_metadata(path: Path, model: trained_mod.TrainedModel, opset: int) -> None:
    import onnx

    proto = onnx.load(str(path))
    values = {"gistnet.weights_sha256": model.sha256, "gistnet.model": model.name, "gistnet.run_id": model.run_id,
              "gistnet.image_size": str(model.image_size), "gistnet.classes": ",".join(model.config.data.head_classes),
              "gistnet.opset": str(opset), "gistnet.version": gistnet.__version__,
              "gistnet.scoring": model.scoring.scoring}
    del proto.metadata_props[:]
    for key, value in values.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _check_against_torch(scorer: torch.nn.Module, path: Path, size: int) -> float:
    images = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _Graph(scorer).eval()(images)[0].numpy()
    got = OnnxScorer.session(str(path), "cpu").run([OUTPUT], {INPUT: images.numpy()})[0]
    difference = float(np.abs(got - expected).max())
    if not difference <= TOLERANCE:
        raise RuntimeError(f"ONNX export differs from torch by {difference} (> {TOLERANCE})")
    return difference


def read_sidecar(model: trained_mod.TrainedModel) -> dict:
    """``<model>/model.onnx.json``, checked against the run: made by ``gistnet export`` from this
    run's model and the weights its report names. ModelError naming the sidecar otherwise."""
    where = model.run.uri_of(model.key(SIDECAR))
    try:
        sidecar = json.loads(model.run.read(model.key(SIDECAR)))
    except FileNotFoundError:
        raise ModelError(f"{where} does not exist: {ONNX_FILE} cannot be verified without the record "
                         "gistnet export writes beside it; run gistnet export again") from None
    except ValueError:
        raise ModelError(f"{where} is not valid JSON; run gistnet export again") from None
    if not isinstance(sidecar, dict) or not isinstance(sidecar.get("sha256"), str):
        raise ModelError(f"{where} records no sha256 of {ONNX_FILE}; run gistnet export again")
    # a fold ensemble's weights_sha256 is the digest of its members' sha256s: it checks all K of them
    recorded = {"run_id": sidecar.get("run_id"), "model": sidecar.get("model"),
                "weights_sha256": sidecar.get("weights_sha256")}
    expected = {"run_id": model.run_id, "model": model.name, "weights_sha256": model.sha256}
    wrong = [k for k in expected if recorded[k] != expected[k]]
    if wrong:
        raise ModelError(f"{where} was exported from other weights or another run ({', '.join(wrong)}: "
                         f"{', '.join(str(recorded[k])[:12] for k in wrong)} where report.json says "
                         f"{', '.join(str(expected[k])[:12] for k in wrong)}); run gistnet export again")
    return sidecar


def verify_file(model: trained_mod.TrainedModel, path: Path, sidecar: dict) -> str:
    """The sha256 of the downloaded ``model.onnx``, which must be the one its sidecar records."""
    digest = sha256_file(path)
    if digest != sidecar["sha256"]:
        raise ModelError(f"{model.run.uri_of(model.key(ONNX_FILE))}: sha256 {digest[:12]}... does not match the "
                         f"{sidecar['sha256'][:12]}... recorded in {SIDECAR}; refusing to score with this file "
                         "(altered after export? run gistnet export again)")
    return digest


class OnnxScorer:
    """``<model>/model.onnx`` under ONNX Runtime; refuses a file made from other weights."""

    def __init__(self, model: trained_mod.TrainedModel, scratch: str, device: str, threads: int = 0):
        path = trained_mod.fetch(model, ONNX_FILE, scratch)
        try:
            self.sha256 = verify_file(model, path, read_sidecar(model))
            self._session = self.session(str(path), device, threads)
        except (DeviceError, ModelError):
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for unreadable files
            raise ModelError(f"{model.run.uri_of(model.key(ONNX_FILE))}: not a loadable ONNX model "
                             f"({type(exc).__name__})") from None
        finally:
            path.unlink(missing_ok=True)
        meta = self._session.get_modelmeta().custom_metadata_map
        where = model.run.uri_of(model.key(ONNX_FILE))
        if meta.get("gistnet.weights_sha256") != model.sha256:
            raise ModelError(f"{where} was exported from other weights (sha256 "
                             f"{meta.get('gistnet.weights_sha256', 'none')[:12]}..., report.json says "
                             f"{model.sha256[:12]}...); run gistnet export again")
        if meta.get("gistnet.image_size") != str(model.image_size):
            raise ModelError(f"{where} expects {meta.get('gistnet.image_size')} px images, the run "
                             f"{model.image_size} px; run gistnet export again")
        if LOGITS not in {o.name for o in self._session.get_outputs()}:
            raise ModelError(f"{where} has no {LOGITS} output (exported by an older gistnet): predict ranks on the "
                             "logits; run gistnet export again")
        self.providers = self._session.get_providers()

    @staticmethod
    def session(path: str, device: str, threads: int = 0):
        import onnxruntime as ort

        available = ort.get_available_providers()
        cuda = "CUDAExecutionProvider" in available
        if device == "cuda" and not cuda:
            raise DeviceError("--device cuda with --engine onnx needs onnxruntime-gpu (no CUDAExecutionProvider; "
                              f"available: {', '.join(available)})")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda and device != "cpu" \
            else ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        return ort.InferenceSession(path, sess_options=options, providers=providers)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images -> (P(positive), logit margin positive - negative), like ``Scorer`` but on
        ONNX Runtime."""
        # The loader holds grayscale data sets as one channel; the graph takes three, as documented.
        images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        probabilities, logits = self._session.run([OUTPUT, LOGITS], {INPUT: np.ascontiguousarray(images.cpu().numpy())})
        if logits.shape[1] == 2:  # as always: column 1 and the logit difference
            return evaluate.Scores(torch.from_numpy(probabilities[:, 1].copy()),
                                   torch.from_numpy(logits[:, 1] - logits[:, 0]), torch.from_numpy(logits.copy()))
        z = torch.from_numpy(logits.copy())
        return evaluate.Scores(torch.from_numpy(probabilities[:, -1].copy()), evaluate.endpoint_scores(z)[1], z)
