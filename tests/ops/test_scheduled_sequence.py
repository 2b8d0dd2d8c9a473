"""The "done when" of the lifecycle issue: a scheduled sequence of three training runs on growing
synthetic data in SeaweedFS, each logged to a real MLflow server and gated by the champion/
challenger check that the training process runs after its report (``promotion.registry`` set,
as the chart's ``promotion.enabled`` does): the first is promoted with no champion to beat, a
deliberately worse one (its class folders swapped, so it learns the labels backwards) is
refused with its evidence, and a better one is promoted; the registry's MLflow alias
(``champion-<registry id>``) ends on the last promoted version.

The models train 2 epochs at 32 px, so they are weak and poorly calibrated: the test widens the
margin and the calibration bound (``promotion.auc_margin`` 0.2, ``max_calibration_shift`` 0.5)
so that only the backwards model fails. The gate's statistics are tested on their own in
test_promotion.py.

Why not the default margin 0.02: it holds only when the better model's AUC is not below the
champion's by more than the DeLong noise allows, and models trained 2 epochs from 60-100 images
are too unstable for that. Tried (Dec 2026) with data whose classes separate by brightness (best
AUC ~0.98; a perfect AUC leaves its interval undefined and refuses the first run): one run (data
seeds 1-3, pixel noise sd 30) promoted night 3 (AUC 0.978 vs 0.946, p = 0.0008); another (seeds
11-13, pixel noise sd 10) trained a night-3 model of AUC 0.754 (night 1: 0.947) and refused it.
More epochs or images would make it stable, and slower."""

import json

import pytest

from gistnet.config import StorageConfig
from gistnet.data import synth
from gistnet.data.storage import open_store
from gistnet.errors import EXIT_REFUSED
from gistnet.observe import registry
from tests.conftest import NO_GALLERY
from tests.mlflowserver import mlflow_server  # noqa: F401 - fixture

mlflow = pytest.importorskip("mlflow")


@pytest.mark.e2e
def test_promoted_refused_promoted_and_the_alias_follows(cli, bucket, s3_env, mlflow_server, s3_client):
    root = f"s3://{bucket}"
    store = lambda prefix: open_store(f"{root}/{prefix}", StorageConfig(), 4)  # noqa: E731
    synth.write_dataset(store("night1"), 30, 30, 32, seed=1)
    synth.write_dataset(store("night2"), 40, 40, 32, seed=2, class_names=("LM", "GIST"))  # labels backwards
    synth.write_dataset(store("night3"), 50, 50, 32, seed=3)
    synth.write_dataset(store("locked"), 40, 40, 32, seed=99)  # the promotion set, used for nothing else
    # Two torch threads, as on the 2-core machine this sequence was tuned on: the three runs' weights (and
    # so whether night 3 clears the margin) depend on the thread count, and xdist workers run one thread.
    env = {**s3_env, **NO_GALLERY, "OMP_NUM_THREADS": "2",
           "GISTNET_TRACKING_MLFLOW_URI": mlflow_server, "GISTNET_PROMOTION_REGISTRY": f"{root}/registry",
           "GISTNET_PROMOTION_DATA": f"{root}/locked", "GISTNET_PROMOTION_AUC_MARGIN": "0.2",
           "GISTNET_PROMOTION_MAX_CALIBRATION_SHIFT": "0.5"}

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
    assert refused["non_inferiority"]["difference"] < -0.2 and refused["non_inferiority"]["p"] >= 0.05
    assert "gistnet: promotion refused: challenger AUC" in worse.stderr
    assert pointer()["run_id"] == "night1"  # production unchanged

    better = night(3)
    assert better.returncode == 0, better.stderr
    promoted = record(3)
    assert promoted["decision"] == "promoted" and promoted["non_inferiority"]["p"] < 0.05
    assert pointer()["run_id"] == "night3" and not pointer()["no_champion"]
    report3 = json.loads(store("runs/night3").read("report.json"))
    assert pointer()["data_digest"] == report3["dataset"]["lineage"]["digest"] == promoted["data_digest"]

    client = mlflow.tracking.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    alias = registry.champion_alias(f"{root}/registry")
    champion = client.get_model_version_by_alias("gistnet-resnet34", alias)
    assert champion.version == report3["tracking"]["models"]["resnet34"]["version"] == "3"
    assert promoted["mlflow"] == {"registered_model": "gistnet-resnet34", "version": "3", "alias": alias,
                                  "registry": f"{root}/registry", "removed_from": []}
