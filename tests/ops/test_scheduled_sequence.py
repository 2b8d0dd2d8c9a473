"""The "done when" of the lifecycle issue: a scheduled sequence of three training runs on growing
synthetic data in SeaweedFS, each logged to a real MLflow server and gated by the champion/
challenger check that the training process runs after its report (``promotion.registry`` set,
as the chart's ``promotion.enabled`` does): the first is promoted with no champion to beat, a
deliberately worse one (its class folders swapped, so it learns the labels backwards) is
refused with its evidence, and a better one is promoted; MLflow's ``champion`` alias ends on
the last promoted version.

The models train 2 epochs at 32 px on data whose classes separate clearly (bright vs dark
noisy images, not the overlapping EUS-like synthetic lesions), so a model that learns the labels
reaches an AUC near the best possible (about 0.98) on the locked set, two such models rank its
images almost alike (a small DeLong variance of their difference), and the gate runs at its
default margin (``promotion.auc_margin`` 0.02). They are still poorly calibrated after 2 epochs, so the calibration bound is widened
(``max_calibration_shift`` 0.5). The gate's statistics are tested on their own in test_promotion.py."""

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from gistnet.config import StorageConfig
from gistnet.data.storage import open_store
from gistnet.errors import EXIT_REFUSED
from tests.mlflowserver import mlflow_server  # noqa: F401 - fixture

mlflow = pytest.importorskip("mlflow")


def _separable(store, n: int, seed: int, class_names=("GIST", "LM"), size: int = 32) -> None:
    """``n`` images per class: the positive class brighter, with pixel noise. Each image's brightness
    varies (sd 30 around 170 and 80), so the classes overlap a little (the best possible AUC is
    about 0.98): a perfect AUC would leave its interval undefined and the first run unpromotable.
    Any model that learns the brightness ranks the images alike, so two of them differ by little."""
    rng = np.random.default_rng(seed)
    for folder, level in ((class_names[0], 170.0), (class_names[1], 80.0)):
        for i in range(n):
            pixels = level + rng.normal(0, 30) + rng.normal(0, 10, (size, size))
            buffer = io.BytesIO()
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L").save(buffer, "PNG")
            store.write_bytes(f"{folder}/{folder.lower()}_{seed}_{i:04d}.png", buffer.getvalue())


@pytest.mark.e2e
def test_promoted_refused_promoted_and_the_alias_follows(cli, bucket, s3_env, mlflow_server, s3_client):
    root = f"s3://{bucket}"
    store = lambda prefix: open_store(f"{root}/{prefix}", StorageConfig(), 4)  # noqa: E731
    started = time.monotonic()
    _separable(store("night1"), 30, seed=1)
    _separable(store("night2"), 40, seed=2, class_names=("LM", "GIST"))  # labels backwards
    _separable(store("night3"), 50, seed=3)
    _separable(store("locked"), 40, seed=99)  # the promotion set, used for nothing else
    env = {**s3_env, "GISTNET_TRACKING_MLFLOW_URI": mlflow_server, "GISTNET_PROMOTION_REGISTRY": f"{root}/registry",
           "GISTNET_PROMOTION_DATA": f"{root}/locked", "GISTNET_PROMOTION_MAX_CALIBRATION_SHIFT": "0.5",
           "GISTNET_DATA_ROI": "none"}  # promotion.auc_margin: its default, 0.02

    def night(n: int):
        return cli("train", "--data", f"{root}/night{n}", "--output", f"{root}/runs", "--run-id", f"night{n}",
                   "--image-size", "32", "--models", "resnet34", "--batch-size", "16", "--epochs", "2",
                   "--augmentation", "none", "--device", "cpu", env=env)

    def record(n: int) -> dict:
        return json.loads(store(f"runs/night{n}").read("promotion.json"))

    def pointer() -> dict:
        return json.loads(store("registry").read("production.json"))

    first = night(1)
    assert first.returncode == 0, first.stderr
    assert record(1)["decision"] == "promoted" and pointer()["run_id"] == "night1" and pointer()["no_champion"]

    worse = night(2)
    assert worse.returncode == EXIT_REFUSED, worse.stderr
    refused = record(2)
    assert refused["decision"] == "refused" and "not non-inferior" in refused["reason"]
    assert refused["non_inferiority"]["margin"] == 0.02
    assert refused["non_inferiority"]["difference"] < -0.2 and refused["non_inferiority"]["p"] >= 0.05
    assert "gistnet: promotion refused: challenger AUC" in worse.stderr
    assert pointer()["run_id"] == "night1"  # production unchanged

    better = night(3)
    assert better.returncode == 0, better.stderr
    promoted = record(3)
    assert promoted["decision"] == "promoted" and promoted["non_inferiority"]["p"] < 0.05, promoted["non_inferiority"]
    print(f"sequence: {time.monotonic() - started:.0f} s; night 3 {promoted['non_inferiority']}")
    assert pointer()["run_id"] == "night3" and not pointer()["no_champion"]
    report3 = json.loads(store("runs/night3").read("report.json"))
    assert pointer()["data_digest"] == report3["dataset"]["lineage"]["digest"] == promoted["data_digest"]

    client = mlflow.tracking.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    champion = client.get_model_version_by_alias("gistnet-resnet34", "champion")
    assert champion.version == report3["tracking"]["models"]["resnet34"]["version"] == "3"
    assert promoted["mlflow"] == {"registered_model": "gistnet-resnet34", "version": "3", "alias": "champion"}
