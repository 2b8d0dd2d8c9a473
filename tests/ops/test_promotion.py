"""The champion/challenger gate: its statistics against independent computations, the pointer's
conditional write, and the gate's bad inputs through the CLI."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from gistnet.config import StorageConfig
from gistnet.data import fingerprint
from gistnet.data.storage import LocalStore, open_store
from gistnet.errors import EXIT_MODEL, EXIT_REFUSED, EXIT_STORAGE, PreconditionFailed
from gistnet.ops import promotion
from tests.conftest import copy_tree, one_line_error
from tests.mlflowserver import mlflow_server  # noqa: F401 - fixture


def _placement_delong(a, b, y):
    """DeLong, DeLong & Clarke-Pearson (1988) by its O(n^2) placement values, for the difference a - b."""
    y = np.asarray(y).astype(bool)

    def placements(s):
        pos, neg = s[y], s[~y]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    (va, wa), (vb, wb) = placements(np.asarray(a)), placements(np.asarray(b))
    m, n = y.sum(), (~y).sum()
    s10 = np.cov(np.vstack([va, vb])) / m
    s01 = np.cov(np.vstack([wa, wb])) / n
    cov = s10 + s01
    return cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]


def test_non_inferiority_matches_an_independent_delong():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 80)
    champion = y + rng.normal(0, 0.9, 80)
    challenger = y + rng.normal(0, 1.0, 80)
    got = promotion.non_inferiority(challenger, champion, y, margin=0.05)
    diff = roc_auc_score(y, challenger) - roc_auc_score(y, champion)
    z = (diff + 0.05) / math.sqrt(_placement_delong(challenger, champion, y))
    assert got["difference"] == pytest.approx(diff)
    assert got["z"] == pytest.approx(z) and got["p"] == pytest.approx(norm.sf(z))
    assert "images independent" in got["method"]
    # the margin moves p the right way; a much worse challenger is not non-inferior
    assert promotion.non_inferiority(challenger, champion, y, 0.0)["p"] > got["p"]
    worse = promotion.non_inferiority(rng.normal(size=80), champion, y, 0.02)
    assert worse["p"] > 0.5 and worse["difference"] < -0.2


def _triplicated(seed=63, noise=1.5):
    """30 patients (15 positive), 3 near-identical images each: two models that differ per patient."""
    rng = np.random.default_rng(seed)
    y = np.repeat([1, 0], 15)
    base = y + rng.normal(0, 1, 30)
    champion = base + rng.normal(0, noise, 30)
    challenger = base + rng.normal(0, noise, 30)
    jitter = lambda s: np.repeat(s, 3) + rng.normal(0, 1e-3, 90)  # noqa: E731
    return y, challenger, champion, np.repeat(y, 3), jitter(challenger), jitter(champion), np.repeat(
        [f"p{i:02d}" for i in range(30)], 3)


def test_non_inferiority_clusters_repeated_patients_obuchowski():
    """Issue 31.1: 30 patients x 3 near-identical images, margin 0.02. With images independent the
    triplicates triple the evidence (SE ~0.059, p ~0.023: promoted); clustered by patient, the SE
    is the one of 30 independent patients (~0.105, p ~0.13: refused)."""
    y, a, b, labels, a3, b3, patients = _triplicated()
    unclustered = promotion.non_inferiority(a3, b3, labels, 0.02)
    clustered = promotion.non_inferiority(a3, b3, labels, 0.02, clusters=patients)
    assert unclustered["p"] < 0.05 and unclustered["se"] == pytest.approx(0.059, abs=0.002)
    assert "images independent" in unclustered["method"]
    assert clustered["p"] >= 0.05 and "clustered by patient" in clustered["method"] and "obuchowski" in clustered["method"]
    # independent check: exact triplicates carry the information of one image per patient, so the
    # clustered SE is DeLong's (placement values) on the 30 patients
    per_patient = math.sqrt(_placement_delong(a, b, y))
    assert clustered["se"] == pytest.approx(per_patient, rel=0.01) and per_patient == pytest.approx(0.105, abs=0.002)
    z = (roc_auc_score(y, a) - roc_auc_score(y, b) + 0.02) / per_patient
    assert clustered["p"] == pytest.approx(norm.sf(z), rel=0.02)
    # a patient id on every image, none repeated: images independent again
    assert "images independent" in promotion.non_inferiority(a, b, y, 0.02, clusters=[f"p{i}" for i in range(30)])["method"]


def _predictions(keys, labels, logits, patients) -> dict:
    """A predict.py predictions.json for the gate: float32 softmax probabilities and logit margins."""
    import torch

    logits = torch.tensor(logits, dtype=torch.float32)
    probabilities = logits.softmax(dim=1)[:, 1].tolist()
    margins = (logits[:, 1] - logits[:, 0]).tolist()
    return {"positive_class": "GIST", "predictions": [
        {"key": k, "label": "GIST" if y else "LM", "probability": p, "score": m, "patient_id": pid}
        for k, y, p, m, pid in zip(keys, labels, probabilities, margins, patients)]}


def test_the_gate_ranks_on_logit_margins_not_saturated_probabilities():
    """Issue 31.3: float32 probabilities saturate at 1.0 and tie (AUC 0.667 here) where the logit
    margins still rank every positive above every negative (AUC 1.0); the gate uses the margins."""
    keys, labels = [f"k{i}" for i in range(6)], [1, 1, 1, 0, 0, 0]
    saturated = [[0, 40], [0, 41], [0, 42], [0, 20], [0, 21], [2, 0]]
    champion = [[0, 3], [0, 1], [0, -1], [0, 2], [0, -2], [0, -3]]
    patients = [""] * 6
    mine, theirs = _predictions(keys, labels, saturated, patients), _predictions(keys, labels, champion, patients)
    probabilities = [r["probability"] for r in mine["predictions"]]
    assert probabilities[:5] == [1.0] * 5 and roc_auc_score(labels, probabilities) == pytest.approx(2 / 3)
    test = promotion.paired_test(mine, theirs, 0.02, "set")
    assert test["auc_challenger"] == 1.0
    assert test["auc_champion"] == pytest.approx(roc_auc_score(labels, [r["score"] for r in theirs["predictions"]]))
    # the same documents with repeated patient ids cluster (31.1 through the gate's own path)
    clustered = [f"p{i // 2}" for i in range(6)]
    assert "clustered by patient" in promotion.paired_test(_predictions(keys, labels, saturated, clustered),
                                                           _predictions(keys, labels, champion, clustered),
                                                           0.02, "set")["method"]


def test_the_gates_calibration_is_named_mean_calibration_difference_not_calibration_in_the_large():
    """The reports' calibration-in-the-large is the logistic intercept; the gate's mean(P) - prevalence
    has its own name (issue 31 item 18)."""
    assert promotion.mean_calibration_difference([1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.25)
    assert promotion.mean_calibration_difference([1, 0], [0.9, 0.1]) == pytest.approx(0.0)
    source = Path(promotion.__file__).read_text()
    assert "calibration-in-the-large {" not in source and '"calibration_in_the_large"' not in source


def test_pixel_digest_is_of_shape_and_bytes():
    a = np.arange(12, dtype=np.uint8).reshape(2, 6)
    import hashlib

    assert fingerprint.pixel_digest(a) == hashlib.sha256(b"2x6" + a.tobytes()).hexdigest()
    assert fingerprint.pixel_digest(a) != fingerprint.pixel_digest(a.reshape(3, 4))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_conditional_write_refuses_a_stale_pointer(where, tmp_path, request):
    if where == "local":
        store = LocalStore(tmp_path / "registry")
    else:
        request.getfixturevalue("s3_env")
        store = open_store(f"s3://{request.getfixturevalue('bucket')}/registry", StorageConfig())
    first = store.write_bytes_if("production.json", b"one", if_none_match=True)
    assert store.read_with_etag("production.json") == (b"one", first)  # the tag a reader gets is the writer's
    with pytest.raises(PreconditionFailed):
        store.write_bytes_if("production.json", b"two", if_none_match=True)
    second = store.write_bytes_if("production.json", b"two", if_match=first)
    with pytest.raises(PreconditionFailed):  # a writer still holding the first pointer loses
        store.write_bytes_if("production.json", b"three", if_match=first)
    assert store.read_with_etag("production.json") == (b"two", second) and second != first


# ------------------------------------------------------------------ through the CLI


def _promotion_set(tmp_path: Path) -> Path:
    from gistnet.data import synth

    root = tmp_path / "promotion-set"
    synth.write_dataset(LocalStore(root), 12, 12, 32, seed=77)
    return root


@pytest.mark.parametrize("roi", ["none", "auto"])
def test_the_promotion_set_is_hashed_as_training_decoded_its_images(tmp_path, roi):
    """The overlap check compares the set's digests with the run's fingerprints.json: both must
    decode alike (the run's data.roi, the manifest's roi), or a training image would pass as new."""
    import torch
    from gistnet.config import DataConfig
    from gistnet.data import dataset, synth

    store = LocalStore(tmp_path / "d")
    synth.write_dataset(store, 5, 5, 48, seed=5)
    keys = sorted(k for k in store.list() if k.endswith(".png"))
    store.write_bytes("manifest.csv", ("path,label,roi\n" + "".join(
        f"{k},{k.split('/')[0]},{'2 2 46 46' if n % 2 else ''}\n" for n, k in enumerate(keys))).encode())
    cfg = DataConfig(image_size=32, roi=roi)
    trained_on = dataset.load_images(store, cfg, torch.device("cpu")).fingerprints
    scanned, _ = promotion._scan_set(store, cfg, 32)
    assert len(trained_on) == 10 and scanned == trained_on


@pytest.mark.e2e
def test_a_promotion_set_that_overlaps_training_is_refused_with_the_count(cli, tiny_runs, tmp_path):
    import yaml

    run = tmp_path / "a"
    copy_tree(Path(tiny_runs) / "a", run)
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]["uri"]
    done = cli("promote", "--run", run, "--registry", tmp_path / "registry", "--data", data)
    one_line_error(done, EXIT_REFUSED, "shares 40 images with the challenger's development data")
    record = json.loads((run / "promotion.json").read_text())
    assert record["decision"] == "refused" and record["overlap"]["count"] == 40
    assert not (tmp_path / "registry" / "production.json").exists()


@pytest.mark.e2e
def test_first_run_promoted_then_pointer_used_by_predict(cli, tiny_runs, tmp_path):
    run = tmp_path / "a"
    copy_tree(Path(tiny_runs) / "a", run)
    registry, data = tmp_path / "registry", _promotion_set(tmp_path)
    done = cli("promote", "--run", run, "--registry", registry, "--data", data)
    assert done.returncode == 0, done.stderr
    pointer = json.loads((registry / "production.json").read_text())
    report = json.loads((run / "report.json").read_text())
    assert pointer["no_champion"] is True and pointer["run_uri"] == str(run)
    assert pointer["sha256"] == report["models"]["resnet34"]["checkpoint"]["sha256"]
    assert pointer["data_digest"] == report["dataset"]["lineage"]["digest"]
    record = json.loads((run / "promotion.json").read_text())
    assert record["decision"] == "promoted" and "no champion to beat" in record["reason"]
    assert record["overlap"]["count"] == 0
    scored = cli("predict", "--run", "production", "--registry", registry, "--data", data, "--output",
                 tmp_path / "p", "--device", "cpu")
    assert scored.returncode == 0, scored.stderr
    assert json.loads((tmp_path / "p" / "predictions.json").read_text())["run_uri"] == str(run)
    # evaluate resolves the same pointer and scores with the promoted model alone
    evaluated = cli("evaluate", "--run", "production", "--registry", registry, "--data", data, "--output",
                    tmp_path / "e", "--device", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr
    external = json.loads((tmp_path / "e" / "report.json").read_text())
    assert external["run_id"] == pointer["run_id"] and external["external"]["run_uri"] == f"{run}/report.json"
    assert list(external["models"]) == [pointer["model"]] == ["resnet34"]
    assert external["models"]["resnet34"]["weights"] == [
        {"key": "resnet34/model.safetensors", "sha256": pointer["sha256"], "fold": None}]


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_production_without_a_pointer_is_exit_9(cli, tmp_path, command):
    (tmp_path / "registry").mkdir()
    done = cli(command, "--run", "production", "--registry", tmp_path / "registry", "--data", tmp_path,
               "--output", tmp_path / "p")
    one_line_error(done, EXIT_MODEL, "no production model")
    assert "production.json does not exist" in done.stderr


@pytest.mark.parametrize("command, content, fragment", [("predict", b"{not json", "is not valid JSON"),
                                                        ("predict", b'{"model": "resnet34"}', "is malformed: no run_uri"),
                                                        ("evaluate", b'{"model": "resnet34"}', "is malformed: no run_uri")])
def test_a_malformed_pointer_is_exit_9_naming_the_key(cli, tmp_path, command, content, fragment):
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "production.json").write_bytes(content)
    done = cli(command, "--run", "production", "--registry", registry, "--data", tmp_path, "--output",
               tmp_path / "p")
    one_line_error(done, EXIT_MODEL, f"{registry}/production.json {fragment}")


@pytest.mark.e2e
def test_a_pointer_whose_run_changed_after_promotion_is_exit_9(cli, tiny_runs, tmp_path):
    """production.json pins the promoted weights' sha256: a run re-trained under the same id (or
    edited) afterwards is not silently served in its place."""
    run = Path(tiny_runs) / "a"
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "production.json").write_text(json.dumps(
        {"run_uri": str(run), "model": "resnet34", "sha256": "0" * 64, "run_id": "a"}))
    done = cli("predict", "--run", "production", "--registry", registry, "--data", tmp_path, "--output",
               tmp_path / "p")
    one_line_error(done, EXIT_MODEL, "the run changed after its promotion")
    assert f"{registry}/production.json promoted resnet34 of {run} with sha256 000000000000..." in done.stderr


@pytest.mark.e2e
def test_promote_refuses_a_champion_whose_run_changed_after_its_promotion(tiny_runs, tmp_path):
    """Issue 31.2: the gate verifies the champion against production.json's sha256 with the function
    --run production uses (trained.open_production): a champion run re-trained or edited after its
    promotion is exit 9 naming the pointer, not scored and compared; nothing is written."""
    from gistnet import config
    from gistnet.errors import ModelError

    challenger = tmp_path / "b"
    copy_tree(Path(tiny_runs) / "b", challenger)
    registry = tmp_path / "registry"
    registry.mkdir()
    pointer = json.dumps({"run_uri": str(Path(tiny_runs) / "a"), "model": "resnet34", "sha256": "0" * 64, "run_id": "a"})
    (registry / "production.json").write_text(pointer)
    cfg = config.load_config(None, {"promotion.data": str(_promotion_set(tmp_path)), "train.device": "cpu",
                                    "promotion.auc_margin": 0.2, "promotion.max_calibration_shift": 0.5}, environ={})
    with pytest.raises(ModelError, match="the run changed after its promotion") as refused:
        promotion.promote(str(challenger), str(registry), cfg, str(tmp_path))
    assert refused.value.exit_code == EXIT_MODEL
    assert f"{registry}/production.json promoted resnet34 of {Path(tiny_runs) / 'a'} with sha256 000000000000" in str(
        refused.value)
    assert not (challenger / "promotion.json").exists() and not (challenger / "promotion").exists()
    assert (registry / "production.json").read_text() == pointer and not (registry / "refusals.json").exists()


@pytest.mark.e2e
def test_promote_with_a_champion_run_that_is_gone_names_production_json(tiny_runs, tmp_path):
    """Issue 31.8: a champion whose run no longer exists is exit 9 naming the pointer, before anything
    is scored or written."""
    from gistnet import config
    from gistnet.errors import ModelError

    challenger = tmp_path / "b"
    copy_tree(Path(tiny_runs) / "b", challenger)
    registry = tmp_path / "registry"
    registry.mkdir()
    gone = tmp_path / "deleted-run"
    pointer = json.dumps({"run_uri": str(gone), "model": "resnet34", "sha256": "0" * 64, "run_id": "x"})
    (registry / "production.json").write_text(pointer)
    cfg = config.load_config(None, {"promotion.data": str(_promotion_set(tmp_path)), "train.device": "cpu"},
                             environ={})
    with pytest.raises(ModelError) as refused:
        promotion.promote(str(challenger), str(registry), cfg, str(tmp_path))
    assert refused.value.exit_code == EXIT_MODEL
    assert f"{registry}/production.json promoted resnet34 of {gone}, but" in str(refused.value)
    assert "no gistnet run at" in str(refused.value)
    assert not (challenger / "promotion").exists() and (registry / "production.json").read_text() == pointer


def _tiny_config(tiny_runs, out, **extra):
    """The configuration ``tiny_runs``' run ``a`` was trained with, its output under ``out``."""
    from gistnet import config
    from tests.conftest import TINY_RUN

    import yaml

    data = yaml.safe_load((Path(tiny_runs) / "a" / "config.yaml").read_text())["data"]["uri"]
    return config.load_config(None, {"data.uri": data, "output.uri": str(out), "output.run_id": "a",
                                     "train.seed": 0, **TINY_RUN, **extra}, environ={})


@pytest.mark.e2e
def test_required_tracking_down_at_promote_time_leaves_production_unchanged(tiny_runs, tmp_path, monkeypatch):
    """Issue 31.5: tracking.required and MLflow unreachable (a free loopback port, nothing listening):
    the evidence is written first (promotion.json, refusals.json), production.json is not switched,
    exit 5; a re-run of the run decides again (promotion.decided is false)."""
    from gistnet.errors import TrackingError
    from tests.conftest import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    run = tmp_path / "a"
    copy_tree(Path(tiny_runs) / "a", run)
    report = json.loads((run / "report.json").read_text())  # as a tracked run records its registered model
    report["tracking"] = {"models": {"resnet34": {"name": "gistnet-resnet34", "version": "1"}}}
    (run / "report.json").write_text(json.dumps(report))
    registry = tmp_path / "registry"
    cfg = _tiny_config(tiny_runs, tmp_path, **{"promotion.data": str(_promotion_set(tmp_path)),
                                               "tracking.mlflow_uri": f"http://127.0.0.1:{free_port()}",
                                               "tracking.required": True, "train.device": "cpu"})
    with pytest.raises(TrackingError, match="production was not switched") as failed:
        promotion.promote(str(run), str(registry), cfg, str(tmp_path))
    assert failed.value.exit_code == EXIT_STORAGE
    assert not (registry / "production.json").exists()
    record = json.loads((run / "promotion.json").read_text())
    assert record["decision"] == "promoted" and record["pointer_switched"] is False
    assert "production.json was not switched" in record["error"] and record["pointer"]["run_id"] == "a"
    assert json.loads((registry / "refusals.json").read_text())["consecutive"] == 0
    assert not promotion.decided(LocalStore(run), str(registry), cfg)


def test_decided_means_refused_or_switched_for_this_registry(tmp_path):
    """Issue 31.4: what a re-run of a complete run reads to know whether its gate still has to run."""
    from gistnet import config

    cfg = config.load_config(None, {}, environ={})
    run, registry = LocalStore(tmp_path / "run"), str(tmp_path / "registry")
    assert not promotion.decided(run, registry, cfg)  # the gate never wrote a record (e.g. it failed with exit 5)
    for record, expected in (({"decision": "refused"}, True), ({"decision": "promoted", "pointer_switched": True}, True),
                             ({"decision": "promoted", "pointer_switched": False}, False),
                             ({"decision": "promoted"}, True)):  # written before pointer_switched existed: after it
        run.write_bytes("promotion.json", json.dumps({"registry": LocalStore(registry).uri, **record}).encode())
        assert promotion.decided(run, registry, cfg) is expected, record
        assert not promotion.decided(run, str(tmp_path / "other-registry"), cfg)


@pytest.mark.e2e
def test_a_complete_run_whose_promotion_was_not_decided_runs_the_gate_on_re_run(tiny_runs, tmp_path):
    """Issue 31.4: the gate failed (exit 5) inside the CronJob after the report was complete; the
    retry runs the gate instead of "already complete; nothing to do", and a decided one is a no-op."""
    from gistnet import pipeline

    copy_tree(Path(tiny_runs) / "a", tmp_path / "out" / "a")
    registry = tmp_path / "registry"
    cfg = _tiny_config(tiny_runs, tmp_path / "out", **{"promotion.registry": str(registry), "train.device": "cpu",
                                                       "promotion.data": str(_promotion_set(tmp_path))})
    outcome = pipeline.run(cfg)
    assert outcome.already_complete
    record = json.loads((tmp_path / "out" / "a" / "promotion.json").read_text())
    assert record["decision"] == "promoted" and record["pointer_switched"] is True
    assert json.loads((registry / "production.json").read_text())["run_id"] == "a"
    written = (tmp_path / "out" / "a" / "promotion.json").stat().st_mtime_ns
    assert pipeline.run(cfg).already_complete  # decided: nothing to do
    assert (tmp_path / "out" / "a" / "promotion.json").stat().st_mtime_ns == written


@pytest.mark.e2e
def test_a_finished_run_re_run_with_other_flags_says_the_configuration_differs(tiny_runs, tmp_path):
    """Issue 30: `--epochs 2` on a finished run id is exit 3 naming the section, --force and --run-id,
    not "already complete; nothing to do" (exit 0)."""
    from gistnet import pipeline
    from gistnet.errors import EXIT_CONFIG, ConfigError

    copy_tree(Path(tiny_runs) / "a", tmp_path / "a")
    with pytest.raises(ConfigError) as refused:
        pipeline.run(_tiny_config(tiny_runs, tmp_path, **{"train.epochs": 2}))
    assert "is already complete with a different configuration (train)" in str(refused.value)
    assert refused.value.exit_code == EXIT_CONFIG and "--force" in str(refused.value) and "--run-id" in str(refused.value)
    assert pipeline.run(_tiny_config(tiny_runs, tmp_path, **{"train.device": "cpu"})).already_complete  # how it runs may differ


def test_an_unreachable_registry_bucket_is_exit_5(cli, s3_env, tmp_path):
    done = cli("promote", "--run", tmp_path / "run", "--registry", "s3://no-such-registry-bucket/prod",
               "--data", tmp_path, env=s3_env)
    one_line_error(done, EXIT_STORAGE, "bucket 'no-such-registry-bucket' does not exist")
    from tests.conftest import free_port

    down = {**s3_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "GISTNET_STORAGE_MAX_ATTEMPTS": "1",
            "GISTNET_STORAGE_CONNECT_TIMEOUT": "2"}
    done = cli("promote", "--run", tmp_path / "run", "--registry", "s3://registry/prod", "--data", tmp_path, env=down)
    one_line_error(done, EXIT_STORAGE, "cannot reach S3 endpoint")


def _tracked_copy(src: Path, dst: Path, registered: str, version: str, mlflow_run_id: str) -> Path:
    """A copy of a finished run whose report.json says its model is ``registered`` ``version`` in MLflow."""
    copy_tree(src, dst)
    report = json.loads((dst / "report.json").read_text())
    report["tracking"] = {"status": "logged", "mlflow_run_id": mlflow_run_id,
                          "models": {"resnet34": {"name": registered, "version": version}}}
    (dst / "report.json").write_text(json.dumps(report))
    return dst


@pytest.mark.e2e
def test_each_registry_moves_its_own_alias_and_keeps_its_own_evidence(tiny_runs, tmp_path, mlflow_server):
    """Two gistnet registries on one MLflow server: each moves its own champion alias and keeps its
    own promotion.json (the one its pointer cites); a switch of architecture leaves one champion."""
    mlflow = pytest.importorskip("mlflow")
    from gistnet import config

    client = mlflow.tracking.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    source = client.create_run(client.create_experiment("sources")).info.run_id
    for name, versions in (("gistnet-resnet34", 2), ("gistnet-resnet50", 1)):
        client.create_registered_model(name)
        for _ in range(versions):
            client.create_model_version(name, f"runs:/{source}/model", source)
    # the same weights each time, so every decision after the first is a certain promotion
    experiment = client.get_run(source).info.experiment_id
    parents = [client.create_run(experiment).info.run_id for _ in range(3)]
    run1 = _tracked_copy(Path(tiny_runs) / "a", tmp_path / "run1", "gistnet-resnet34", "1", parents[0])
    run2 = _tracked_copy(Path(tiny_runs) / "a", tmp_path / "run2", "gistnet-resnet34", "2", parents[1])
    run3 = _tracked_copy(Path(tiny_runs) / "a", tmp_path / "run3", "gistnet-resnet50", "1", parents[2])
    data = _promotion_set(tmp_path)
    cfg = config.load_config(None, {"promotion.data": str(data), "tracking.mlflow_uri": mlflow_server,
                                    "promotion.max_calibration_shift": 1.0}, environ={})
    staging, production = tmp_path / "staging", tmp_path / "production"

    def cited(registry: Path) -> dict:  # the evidence the registry's pointer cites
        return json.loads(Path(json.loads((registry / "production.json").read_text())["evidence"]).read_text())

    first = promotion.promote(str(run1), str(production), cfg, str(tmp_path))
    second = promotion.promote(str(run1), str(staging), cfg, str(tmp_path))  # the same run, another registry
    assert first["decision"] == second["decision"] == "promoted"
    assert cited(production)["registry"] == str(production) and cited(staging)["registry"] == str(staging)
    assert json.loads((run1 / "promotion.json").read_text()) == cited(staging)  # the run's latest decision
    assert first["mlflow"]["alias"] != second["mlflow"]["alias"]
    staged = promotion.gate(str(run2), str(staging), cfg, str(tmp_path))
    assert staged["decision"] == "promoted" and staged["mlflow"]["removed_from"] == []
    version_of = lambda name, alias: client.get_model_version_by_alias(name, alias).version  # noqa: E731
    assert version_of("gistnet-resnet34", first["mlflow"]["alias"]) == "1"  # production's: not moved by staging
    assert version_of("gistnet-resnet34", second["mlflow"]["alias"]) == "2"
    # production switches architecture: its alias leaves gistnet-resnet34, staging's stays
    switched = promotion.promote(str(run3), str(production), cfg, str(tmp_path))
    assert switched["decision"] == "promoted" and switched["mlflow"]["removed_from"] == ["gistnet-resnet34"]
    assert version_of("gistnet-resnet50", first["mlflow"]["alias"]) == "1"
    assert set(client.get_registered_model("gistnet-resnet34").aliases) == {second["mlflow"]["alias"]}


@pytest.mark.e2e
def test_the_gate_logs_each_decision_to_mlflow(tiny_runs, tmp_path, mlflow_server):
    """Promoted and refused, each decision is a run nested under the challenger's MLflow run: the
    decision, its p, margin and AUCs as promotion.json has them, and promotion.json itself."""
    mlflow = pytest.importorskip("mlflow")
    from gistnet import config
    from gistnet.errors import PromotionRefused
    from gistnet.observe import registry

    client = mlflow.tracking.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    experiment = client.create_experiment("runs")
    parents = [client.create_run(experiment).info.run_id for _ in range(2)]
    champion = _tracked_copy(Path(tiny_runs) / "a", tmp_path / "champion", "gistnet-resnet34", "1", parents[0])
    challenger = _tracked_copy(Path(tiny_runs) / "a", tmp_path / "challenger", "gistnet-resnet34", "2", parents[1])
    settings = {"promotion.data": str(_promotion_set(tmp_path)), "tracking.mlflow_uri": mlflow_server}
    registry_uri = str(tmp_path / "registry")
    first = promotion.gate(str(champion), registry_uri, config.load_config(None, settings, environ={}), str(tmp_path))
    # the same weights pass the AUC test; a calibration bound no model meets refuses them
    strict = config.load_config(None, {**settings, "promotion.max_calibration_shift": 1e-9}, environ={})
    with pytest.raises(PromotionRefused) as refused:
        promotion.gate(str(challenger), registry_uri, strict, str(tmp_path))
    record = refused.value.record

    def decisions(parent: str) -> list:
        return client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}' and "
                                                "tags.`gistnet.role` = 'promotion'")

    [promoted] = decisions(parents[0])
    assert promoted.info.status == "FINISHED" and promoted.data.tags["gistnet.decision"] == "promoted"
    assert promoted.data.metrics["promoted"] == 1.0 and promoted.data.tags["gistnet.reason"] == first["reason"]
    assert promoted.data.metrics["auc_challenger"] == pytest.approx(first["challenger"]["evaluation"]["roc_auc"]["value"])
    [logged] = decisions(parents[1])
    test = record["non_inferiority"]
    assert logged.data.tags["gistnet.decision"] == "refused" and logged.data.metrics["promoted"] == 0.0
    assert logged.data.tags["gistnet.registry"] == record["registry"] and "calibration" in logged.data.tags["gistnet.reason"]
    for name in ("p", "margin", "auc_challenger", "auc_champion", "difference"):
        assert logged.data.metrics[name] == pytest.approx(test[name]), name
    assert logged.data.metrics["mean_calibration_difference"] == pytest.approx(
        record["challenger"]["mean_calibration_difference"])
    assert logged.data.params["max_calibration_shift"] == "1e-09"
    downloaded = client.download_artifacts(logged.info.run_id, "promotion.json", str(tmp_path))
    assert json.loads(Path(downloaded).read_text()) == record
    assert client.get_run(parents[1]).data.tags[f"gistnet.promotion.{registry.registry_id(registry_uri)}"] == "refused"
