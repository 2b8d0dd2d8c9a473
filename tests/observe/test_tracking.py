"""MLflow tracking against a real ``mlflow server`` on loopback (SQLite backend, artifacts proxied
to the loopback SeaweedFS). What the server holds is read back through MLflow's own client."""

import json
import logging
from pathlib import Path

import pytest

from gistnet.config import TrackingConfig
from gistnet.errors import EXIT_CONFIG, EXIT_STORAGE, TrackingError
from gistnet.observe import tracking
from tests.conftest import free_port, one_line_error
from tests.mlflowserver import module_mlflow  # noqa: F401 - fixture

mlflow = pytest.importorskip("mlflow")

MLFLOW_PASSWORD = "mlflow-SENTINEL-pw-83jdK2"


@pytest.fixture
def mlflow_server(module_mlflow):
    """The module's one MLflow server (starting one takes seconds): each test that uses it keeps
    to its own experiment and model prefix, so none sees another's runs or versions."""
    return module_mlflow[0]


def _flags(**extra) -> list[str]:
    extra = {"--epochs": 1, **extra}
    return ["--image-size", "32", "--models", "resnet34", "--batch-size", "16", "--augmentation", "none",
            "--device", "cpu", *[str(x) for kv in extra.items() for x in kv]]


def test_the_config_key_wins_over_the_environment():
    env = {"MLFLOW_TRACKING_URI": "http://from-env"}
    assert tracking.tracking_uri(TrackingConfig(), env) == "http://from-env"
    assert tracking.tracking_uri(TrackingConfig(mlflow_uri="http://from-config"), env) == "http://from-config"
    assert tracking.tracking_uri(TrackingConfig(), {}) == ""
    assert not tracking.Tracker(TrackingConfig(), {}).enabled


def test_params_are_the_flattened_config():
    assert tracking.flat_params({"train": {"epochs": 2, "models": ["a", "b"]}, "x": {}}) == {
        "train.epochs": "2", "train.models": '["a", "b"]', "x": "{}"}


def test_a_server_that_is_down_warns_once_and_stops_tracking(caplog, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://user:{MLFLOW_PASSWORD}@127.0.0.1:{free_port()}"
    tracker = tracking.Tracker(TrackingConfig(mlflow_uri=uri), {})
    with caplog.at_level(logging.WARNING):
        tracker.start("r1", {"train": {"epochs": 1}}, None)
        unit = tracker.unit("resnet34", "resnet34", None)
        unit.on_epoch("resnet34", {"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "train_accuracy": 0.5,
                                   "val_accuracy": 0.5}, 1)
    warnings = [r for r in caplog.records if "MLflow tracking at" in r.getMessage()]
    assert len(warnings) == 1
    status = tracker.status()
    assert status["status"] == "failed" and "connecting" in status["error"]
    assert MLFLOW_PASSWORD not in json.dumps(status) and MLFLOW_PASSWORD not in caplog.text
    required = tracking.Tracker(TrackingConfig(mlflow_uri=uri, required=True), {})
    with pytest.raises(TrackingError, match="tracking.required is true") as caught:
        required.start("r1", {}, None)
    assert MLFLOW_PASSWORD not in str(caught.value) and caught.value.exit_code == EXIT_STORAGE


@pytest.mark.e2e
def test_required_tracking_with_the_server_down_is_exit_5(cli, tiny_data, tmp_path):
    env = {**__import__("os").environ, "GISTNET_TRACKING_REQUIRED": "true", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "GISTNET_TRACKING_MLFLOW_URI": f"http://127.0.0.1:{free_port()}"}
    done = cli("train", "--data", tiny_data, "--output", tmp_path / "o", "--run-id", "r", *_flags(), env=env)
    one_line_error(done, EXIT_STORAGE, "tracking.required is true")
    assert not (tmp_path / "o" / "r" / "report.json").exists()


@pytest.mark.e2e
def test_a_run_is_logged_registered_and_its_artifacts_reach_the_bucket(cli, tiny_data, tmp_path, module_mlflow,
                                                                       s3_env, s3_client, monkeypatch):
    """The one test on this module's server with the default experiment and model prefix."""
    import torch

    from gistnet.config import StorageConfig
    from gistnet.serving import trained

    mlflow_server, bucket, _ = module_mlflow
    env = {**s3_env, "MLFLOW_TRACKING_URI": mlflow_server,  # the environment variable alone turns tracking on
           "MLFLOW_TRACKING_USERNAME": "gistnet", "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD}
    done = cli("train", "--data", tiny_data, "--output", tmp_path / "o", "--run-id", "r1",
               *_flags(**{"--epochs": 2}), env=env)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "o" / "r1"
    report = json.loads((run / "report.json").read_text())
    assert report["tracking"]["status"] == "logged", report["tracking"]

    client = mlflow.tracking.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    experiment = client.get_experiment_by_name("gistnet")
    parents = client.search_runs([experiment.experiment_id], "tags.`gistnet.role` = 'run'")
    assert [p.data.tags["gistnet.run_id"] for p in parents] == ["r1"]
    parent = parents[0]
    assert parent.info.run_id == report["tracking"]["mlflow_run_id"] and parent.info.status == "FINISHED"
    # the resolved config as params
    assert parent.data.params["train.epochs"] == "2" and parent.data.params["data.image_size"] == "32"
    # final metrics and their intervals
    acc = report["models"]["resnet34"]["metrics"]["accuracy"]
    assert parent.data.metrics["resnet34.accuracy"] == pytest.approx(acc["value"])
    assert parent.data.metrics["resnet34.accuracy.ci_low"] == pytest.approx(acc["ci_low"])
    assert parent.data.metrics["resnet34.roc_auc.ci_high"] == pytest.approx(report["models"]["resnet34"]["roc_auc"]["ci_high"])
    # the data set as an input: name, digest, source
    lineage = report["dataset"]["lineage"]
    inputs = parent.inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0].dataset
    assert ds.name == Path(tiny_data).name and ds.digest == lineage["digest"][len("sha256:"):][:32]
    assert json.loads(ds.source)["uri"] == str(tiny_data) and json.loads(ds.profile)["digest"] == lineage["digest"]
    assert parent.data.tags["gistnet.data_digest"] == lineage["digest"]
    # per-epoch metrics in the unit's child run, step = epoch
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert [c.data.tags["gistnet.unit"] for c in children] == ["resnet34"]
    history = client.get_metric_history(children[0].info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx([e["val_loss"] for e in report["models"]["resnet34"]["history"]])
    # artifacts, through the server's proxy into the bucket
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.json", "report.html", "checklist.md", "figures"} <= names, names
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert "figures/roc.png" in figures and "figures/training_curves.png" in figures
    local = client.download_artifacts(parent.info.run_id, "report.json", str(tmp_path / "dl"))
    assert json.loads(Path(local).read_text())["dataset"]["lineage"]["digest"] == lineage["digest"]
    keys = [o["Key"] for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="mlflow/")
            for o in page.get("Contents", [])]
    assert any(parent.info.run_id in k and k.endswith("/report.html") for k in keys), keys  # this run's, not another test's
    # the model, registered under <prefix>-<model>
    version = client.get_model_version("gistnet-resnet34", "1")
    assert report["tracking"]["models"]["resnet34"] == {"name": "gistnet-resnet34", "version": "1"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", mlflow_server)
    (tmp_path / "m").mkdir()
    loaded = mlflow.pytorch.load_model(f"models:/gistnet-resnet34/{version.version}", dst_path=str(tmp_path / "m"))
    loaded = loaded if isinstance(loaded, torch.nn.Module) else loaded.module()
    ours = trained.load_weights(trained.open_run(str(run), "resnet34", StorageConfig()), str(tmp_path))
    batch = torch.rand(3, 3, 32, 32)  # a batch of 3: the registered graph is not fixed to the example's 2
    with torch.no_grad():
        assert torch.allclose(loaded(batch), ours(batch), atol=1e-4)
    # gistnet export adds the ONNX file to the same run and registers it as the next version
    exported = cli("export", "--run", run, env=env)
    assert exported.returncode == 0, exported.stderr
    sidecar = json.loads((run / "resnet34" / "model.onnx.json").read_text())
    onnx_versions = [v for v in client.search_model_versions("name='gistnet-resnet34'")
                     if v.tags.get("gistnet.format") == "onnx"]
    assert [(v.version, v.run_id) for v in onnx_versions] == [("2", parent.info.run_id)]
    assert onnx_versions[0].tags["gistnet.torch_version"] == "1"
    assert onnx_versions[0].tags["gistnet.weights_sha256"] == report["models"]["resnet34"]["checkpoint"]["sha256"]
    assert client.get_model_version("gistnet-resnet34", "1").tags["gistnet.onnx_version"] == "2"
    assert sidecar["tracking"] == {"status": "logged", "mlflow_run_id": parent.info.run_id,
                                   "registered_model": {"name": "gistnet-resnet34", "version": "2"}}
    import mlflow.onnx as mlflow_onnx
    import onnxruntime

    (tmp_path / "onnx").mkdir()
    proto = mlflow_onnx.load_model("models:/gistnet-resnet34/2", dst_path=str(tmp_path / "onnx"))
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    probabilities = session.run(["probabilities"], {"images": images.numpy()})[0]
    with torch.no_grad():
        expected = trained.Scorer(ours, torch.device("cpu"))(images).numpy()
    assert abs(probabilities - expected).max() < 1e-4
    # no credential anywhere
    for text in [done.stdout, done.stderr, exported.stdout, exported.stderr, *(p.read_text(errors="ignore") for p in run.rglob("*") if p.is_file()
                                             and p.suffix in (".json", ".md", ".html", ".yaml", ".csv"))]:
        assert MLFLOW_PASSWORD not in text


@pytest.mark.e2e
def test_fanned_out_folds_are_child_runs_of_one_parent(cli, tiny_data, tmp_path, mlflow_server, s3_env):
    env = {**s3_env, "GISTNET_TRACKING_MLFLOW_URI": mlflow_server, "GISTNET_TRACKING_EXPERIMENT": "kfold",
           "GISTNET_TRACKING_MODEL_PREFIX": "kfold"}
    for fold in ("0", "1"):  # two processes, one fold each: the second writes the report
        done = cli("train", "--data", tiny_data, "--output", tmp_path / "o", "--run-id", "k", "--split", "kfold",
                   "--folds", "2", "--fold", fold, *_flags(**{"--epochs": 1}), env=env)
        assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "o" / "k" / "report.json").read_text())
    assert report["status"] == "complete" and report["tracking"]["status"] == "logged"
    client = mlflow.tracking.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    experiment = client.get_experiment_by_name("kfold")
    parents = client.search_runs([experiment.experiment_id], "tags.`gistnet.role` = 'run'")
    assert len(parents) == 1
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert sorted(c.data.tags["gistnet.unit"] for c in children) == ["resnet34 fold 0", "resnet34 fold 1"]
    assert all(c.data.metrics.get("train_loss") is not None for c in children)
    assert "resnet34.accuracy" in parents[0].data.metrics
    # the K fold networks registered as one ensemble, on the parent run
    import hashlib
    import statistics

    import torch

    from gistnet import models
    from gistnet.serving import ensemble
    from gistnet.training import train

    versions = client.search_model_versions("name='kfold-resnet34'")
    assert [(v.version, v.run_id) for v in versions] == [("1", parents[0].info.run_id)]
    assert report["tracking"]["models"]["resnet34"] == {"name": "kfold-resnet34", "version": "1"}
    folds = report["models"]["resnet34"]["folds"]
    tags = versions[0].tags
    assert tags["gistnet.kind"] == "ensemble of 2 folds" and "ensemble of 2 folds" in versions[0].description
    assert float(tags["gistnet.threshold"]) == pytest.approx(statistics.median(f["youden_threshold"] for f in folds),
                                                             rel=1e-5)
    networks = []  # each fold's network, loaded here from its weights file
    for f in folds:
        weights = tmp_path / "o" / "k" / "folds" / str(f["fold"]) / "resnet34" / "model.safetensors"
        assert hashlib.sha256(weights.read_bytes()).hexdigest() == f["checkpoint"]["sha256"]
        network = models.build_model("resnet34")
        network.load_state_dict(models.load_state_dict_file(str(weights)))
        networks.append(network.eval())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mp.setenv("MLFLOW_REGISTRY_URI", mlflow_server)
        (tmp_path / "m").mkdir()
        loaded = mlflow.pytorch.load_model("models:/kfold-resnet34/1", dst_path=str(tmp_path / "m"))
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    x = train.Preprocess(torch.device("cpu"))(images)
    with torch.no_grad():
        logits = loaded(x)
        margins = torch.stack([(lambda out: out[:, 1] - out[:, 0])(n(x)) for n in networks])
        assert torch.allclose(logits[:, 1] - logits[:, 0], margins.mean(dim=0), atol=1e-4)
        scorer = ensemble.EnsembleScorer(networks, torch.device("cpu"))
        assert torch.allclose(logits[:, 1] - logits[:, 0], scorer(images), atol=1e-4)


@pytest.mark.e2e
def test_a_server_down_during_training_does_not_lose_the_run(cli, tiny_data, tmp_path):
    env = {**__import__("os").environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "GISTNET_TRACKING_MLFLOW_URI": f"http://127.0.0.1:{free_port()}"}
    done = cli("train", "--data", tiny_data, "--output", tmp_path / "o", "--run-id", "r", *_flags(), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("MLflow tracking at") == 1
    report = json.loads((tmp_path / "o" / "r" / "report.json").read_text())
    assert report["status"] == "complete" and report["tracking"]["status"] == "failed"


def test_observers_compose_every_event_in_order():
    from gistnet.observe.observers import Observers

    heard = []

    class Ear:
        def __init__(self, name):
            self.name = name

        def on_step(self, model, images):
            heard.append((self.name, "step", model, images))

        def on_epoch(self, model, record, total):
            heard.append((self.name, "epoch", model, record["epoch"], total))

    both = Observers(Ear("prometheus"), Ear("mlflow"))
    both.on_step("resnet34", 16)
    both.on_epoch("resnet34", {"epoch": 1}, 2)
    assert heard == [("prometheus", "step", "resnet34", 16), ("mlflow", "step", "resnet34", 16),
                     ("prometheus", "epoch", "resnet34", 1, 2), ("mlflow", "epoch", "resnet34", 1, 2)]


@pytest.mark.e2e
def test_export_with_the_server_down_warns_once_and_still_exports(exported_run, tmp_path, caplog, monkeypatch):
    """What gistnet export does after writing model.onnx (ops.record.log_onnx), with the server down."""
    from gistnet import config
    from gistnet.ops import record
    from tests.conftest import copy_run

    run = copy_run(Path(exported_run), tmp_path / "a", "resnet34/model.onnx", "resnet34/model.onnx.json")
    report = json.loads((run / "report.json").read_text())
    report["tracking"] = {"status": "logged", "mlflow_run_id": "0123456789abcdef", "models": {}}
    (run / "report.json").write_text(json.dumps(report))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://user:{MLFLOW_PASSWORD}@127.0.0.1:{free_port()}"
    cfg = config.load_config(None, {"tracking.mlflow_uri": uri}, environ={})
    with caplog.at_level(logging.WARNING):
        outcome = record.log_onnx(str(run), "resnet34", cfg, str(tmp_path))
    assert len([r for r in caplog.records if "MLflow tracking at" in r.getMessage()]) == 1
    assert outcome["status"] == "failed" and outcome["registered_model"] is None
    sidecar = json.loads((run / "resnet34" / "model.onnx.json").read_text())
    assert sidecar["tracking"] == outcome and (run / "resnet34" / "model.onnx").exists()
    assert MLFLOW_PASSWORD not in json.dumps(sidecar) and MLFLOW_PASSWORD not in caplog.text
    required = config.load_config(None, {"tracking.mlflow_uri": uri, "tracking.required": True}, environ={})
    with pytest.raises(TrackingError, match="tracking.required is true") as caught:
        record.log_onnx(str(run), "resnet34", required, str(tmp_path))
    assert caught.value.exit_code == EXIT_STORAGE and MLFLOW_PASSWORD not in str(caught.value)


def test_a_transient_failure_ends_the_runs_failed_with_the_reason(mlflow_server, monkeypatch, caplog):
    """The server answers, then resets every connection for one epoch, then answers again: the parent
    and the unit's child run end FAILED with the reason, not RUNNING forever. Through the fault proxy."""
    from gistnet import __version__
    from tests.faultproxy import FaultProxy

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    epoch = {"train_loss": 1.0, "val_loss": 1.0, "train_accuracy": 0.5, "val_accuracy": 0.5}
    with FaultProxy(mlflow_server, pattern="ok") as proxy:
        tracker = tracking.Tracker(TrackingConfig(mlflow_uri=proxy.url, experiment="transient"), {})
        tracker.start("r1", {"train": {"epochs": 2}}, None)
        unit = tracker.unit("resnet34", "resnet34", None)
        unit.on_epoch("resnet34", {"epoch": 1, **epoch}, 2)
        proxy.pattern = ["reset"]  # the server goes away for a moment
        with caplog.at_level(logging.WARNING):
            unit.on_epoch("resnet34", {"epoch": 2, **epoch}, 2)
        proxy.pattern = ["ok"]  # and is back when the run finishes
        unit.finished()
        tracker.finish({"models": {}, "best_model": "resnet34", "status": "complete"}, {}, {})
    assert tracker.status()["status"] == "failed" and "logging epoch 2" in tracker.status()["error"]
    client = mlflow.tracking.MlflowClient(tracking_uri=mlflow_server)
    parent = client.get_run(tracker.parent_id)
    child = client.get_run(unit.run_id)
    for run in (parent, child):
        assert run.info.status == "FAILED", run.info
        assert "logging epoch 2 of resnet34" in run.data.tags["gistnet.tracking_error"]
    # the parent carries MLflow's context tags, as its fluent API sets them, and gistnet's version
    assert parent.data.tags["gistnet.version"] == __version__
    assert parent.data.tags["mlflow.user"] and parent.data.tags["mlflow.source.type"] == "LOCAL"
    assert "mlflow.source.name" in parent.data.tags


def test_a_failing_process_ends_its_open_runs_failed(mlflow_server):
    """pipeline.run on any failure (tracking.abort_open): the runs this process started end FAILED."""
    tracker = tracking.Tracker(TrackingConfig(mlflow_uri=mlflow_server, experiment="aborted"), {})
    tracker.start("r2", {}, None)
    unit = tracker.unit("resnet34", "resnet34", None)
    tracking.abort_open("StopRequested: SIGTERM before training resnet34")
    client = mlflow.tracking.MlflowClient(tracking_uri=mlflow_server)
    for run_id in (tracker.parent_id, unit.run_id):
        run = client.get_run(run_id)
        assert run.info.status == "FAILED"
        assert run.data.tags["gistnet.tracking_error"] == "StopRequested: SIGTERM before training resnet34"
    resumed = tracking.Tracker(TrackingConfig(mlflow_uri=mlflow_server, experiment="aborted"), {})  # the same run id resumed
    resumed.start("r2", {}, None)
    assert resumed.parent_id == tracker.parent_id and client.get_run(tracker.parent_id).info.status == "RUNNING"


@pytest.mark.parametrize("variable, named", [("GISTNET_TRACKING_MLFLOW_URI", "tracking.mlflow_uri"),
                                             ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI")])
def test_a_tracking_uri_with_a_password_is_refused_naming_the_key(cli, tmp_path, variable, named):
    """As the chart refuses it: credentials only from MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN."""
    env = {**__import__("os").environ, variable: f"http://gistnet:{MLFLOW_PASSWORD}@127.0.0.1:{free_port()}"}
    env.pop("MLFLOW_TRACKING_URI" if variable != "MLFLOW_TRACKING_URI" else "GISTNET_TRACKING_MLFLOW_URI", None)
    for command in (("train", "--data", tmp_path / "data", "--output", tmp_path / "o"),
                    ("promote", "--run", tmp_path / "run", "--registry", tmp_path / "registry", "--data", tmp_path)):
        done = cli(*command, env=env)
        one_line_error(done, EXIT_CONFIG, f"{named}")
        assert "must not carry user:password@" in done.stderr
        where = ": put the credentials in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
        assert where in " ".join(done.stderr.split())
        assert MLFLOW_PASSWORD not in done.stdout + done.stderr


def test_mlflow_prints_no_run_url(mlflow_server, capfd):
    """MLflow's own "View run ... at <tracking URI>" line (printed when a run ends) would show a
    user:password@ of the URI; gistnet silences it."""
    user_info = mlflow_server.replace("http://", f"http://gistnet:{MLFLOW_PASSWORD}@")
    tracker = tracking.Tracker(TrackingConfig(mlflow_uri=user_info, experiment="quiet"), {})
    tracker.start("r3", {}, None)
    tracker.unit("resnet34", "resnet34", None).finished()
    tracker.finish({"models": {}, "best_model": "resnet34", "status": "complete"}, {}, {})
    assert tracker.status()["status"] == "logged"
    out, err = capfd.readouterr()
    assert "View run" not in out + err and MLFLOW_PASSWORD not in out + err
