"""gistnet export --format onnx: the ONNX file agrees with torch on the run's validation images,
has a dynamic batch axis, and records its opset and the weights it came from."""

import json

import numpy as np
import pytest
import torch

from gistnet.data import dataset
from gistnet.serving import export
from gistnet.serving import trained
from gistnet.config import StorageConfig
from gistnet.data.storage import LocalStore, sha256_file

pytestmark = pytest.mark.e2e


def _validation_images(run_dir, model) -> torch.Tensor:
    """The run's validation images, listed and decoded by the training code with the run's config."""
    loaded = dataset.load_images(LocalStore(model.config.data.uri), model.config.data, torch.device("cpu"))
    val_keys = json.loads((run_dir / "split.json").read_text())["val"]
    return loaded.images.subset(val_keys).images


def test_onnx_matches_torch_on_the_validation_images(exported_run, tmp_path):
    import onnx
    import onnxruntime as ort

    model = trained.open_run(str(exported_run), "best", StorageConfig())
    images = _validation_images(exported_run, model)
    assert len(images) == 8
    with torch.no_grad():
        expected = trained.Scorer(trained.load_weights(model, str(tmp_path)), torch.device("cpu"))(images).numpy()
    images = images.expand(-1, 3, -1, -1).contiguous()  # the graph's input is N x 3 x S x S (gray: 3 equal channels)
    path = str(exported_run / "resnet34" / "model.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    whole = session.run(None, {"images": images.numpy()})[0]
    one_by_one = np.concatenate([session.run(None, {"images": images[i:i + 1].numpy()})[0] for i in range(8)])
    assert whole.shape == (8, 2) and np.allclose(whole.sum(axis=1), 1, atol=1e-5)
    assert float(np.abs(whole - expected).max()) <= 1e-4
    assert float(np.abs(one_by_one - expected).max()) <= 1e-4

    proto = onnx.load(path)
    sidecar = json.loads((exported_run / "resnet34" / "model.onnx.json").read_text())
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [sidecar["opset"]] == [18]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["gistnet.weights_sha256"] == model.sha256 == sidecar["weights_sha256"]
    assert meta["gistnet.image_size"] == "32" and meta["gistnet.run_id"] == "a"
    assert sidecar["sha256"] == sha256_file(path)
    assert sidecar["check"]["max_abs_difference_vs_torch"] <= export.TOLERANCE
