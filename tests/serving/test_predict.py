"""gistnet predict: the run's own preprocessing and weights applied to new images, end to end
over S3, and every way a model or data prefix can be unusable."""

import csv
import io
import json
import shutil

import pytest

from gistnet import errors
from gistnet.serving import predict
from gistnet.config import load_config
from gistnet.data.storage import LocalStore
from tests.conftest import copy_run, one_line_error

pytestmark = pytest.mark.e2e


def _csv_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def _recorded_probabilities(run_csv: str, model: str) -> dict[str, float]:
    """What the run itself recorded for its validation images (its predictions.csv)."""
    return {r["key"]: float(r["probability"]) for r in _csv_rows(run_csv) if r["model"] == model}


def test_predict_over_s3_reproduces_the_runs_validation_probabilities(cli, bucket, s3_client, s3_env, tmp_path):
    from gistnet.data import synth

    get = lambda key: s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()  # noqa: E731
    data, runs = f"s3://{bucket}/data", f"s3://{bucket}/runs"
    assert cli("synth", "--output", data, "--n-gist", 16, "--n-lm", 16, "--image-size", 32, env=s3_env).returncode == 0
    trained = cli("train", "--data", data, "--output", runs, "--run-id", "p", "--models", "resnet34", "--epochs", 1,
                  "--image-size", 32, "--batch-size", 16, "--augmentation", "none", env=s3_env)
    assert trained.returncode == 0, trained.stderr
    run = f"{runs}/p"
    report = json.loads(get("runs/p/report.json"))

    # the run's own images, class folders present: labels and metrics come out too
    own = cli("predict", "--run", run, "--data", data, "--output", f"s3://{bucket}/scored/own", env=s3_env)
    assert own.returncode == 0, own.stderr
    assert own.stdout.strip() == f"s3://{bucket}/scored/own/predictions.json"
    scored = {r["key"]: r for r in _csv_rows(get("scored/own/predictions.csv").decode())}
    assert len(scored) == 32
    recorded = _recorded_probabilities(get("runs/p/predictions.csv").decode(), "resnet34")
    val_keys = json.loads(get("runs/p/split.json"))["val"]
    assert sorted(recorded) == sorted(val_keys)
    difference = max(abs(float(scored[k]["probability"]) - recorded[k]) for k in val_keys)
    assert difference <= 1e-6, difference
    result = json.loads(get("scored/own/predictions.json"))
    sha = report["models"]["resnet34"]["checkpoint"]["sha256"]
    identity = (result["run_id"], result["model"], result["weights_sha256"], result["threshold"])
    assert identity == ("p", "resnet34", sha, 0.5)
    assert result["evaluation"]["counts"] == {"GIST": 16, "LM": 16}
    assert sum(result["evaluation"]["confusion_matrix"].values()) == 32
    assert result["evaluation"]["ci_method"] == "wilson" and "ci_low" in result["evaluation"]["metrics"]["sensitivity"]
    row = scored[val_keys[0]]
    assert (row["model"], row["weights_sha256"], row["run_id"]) == ("resnet34", sha, "p")
    assert row["label"] == val_keys[0].split("/")[0]
    assert row["call"] == ("GIST" if float(row["probability"]) >= 0.5 else "LM")

    # a fresh synthetic set without class folders, and one unusable object
    synth.write_dataset(LocalStore(tmp_path / "fresh"), 3, 3, 48, seed=7)
    for n, png in enumerate(sorted((tmp_path / "fresh").rglob("*.png"))):
        s3_client.put_object(Bucket=bucket, Key=f"new/case-{n}.png", Body=png.read_bytes())
    s3_client.put_object(Bucket=bucket, Key="new/notes.txt", Body=b"not an image")
    fresh = cli("predict", "--run", run, "--data", f"s3://{bucket}/new", "--output", f"s3://{bucket}/scored/new",
                "--threshold", 0.3, "--batch-size", 4, env=s3_env)
    assert fresh.returncode == 0, fresh.stderr
    rows = _csv_rows(get("scored/new/predictions.csv").decode())
    assert [r["key"] for r in rows] == [f"case-{n}.png" for n in range(6)]
    assert all(r["label"] == "" and r["call"] == ("GIST" if float(r["probability"]) >= 0.3 else "LM") for r in rows)
    result = json.loads(get("scored/new/predictions.json"))
    assert result["evaluation"] is None and result["threshold"] == 0.3
    assert result["unusable"] == [{"uri": f"s3://{bucket}/new/notes.txt",
                                   "reason": "not a recognised image (PNG, JPEG, BMP, TIFF or DICOM)"}]

    # the same predictions from the exported ONNX file under ONNX Runtime
    exported = cli("export", "--run", run, "--format", "onnx", env=s3_env)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.strip() == f"{run}/resnet34/model.onnx"
    onnx = cli("predict", "--run", run, "--data", data, "--output", f"s3://{bucket}/scored/onnx", "--engine", "onnx",
               env=s3_env)
    assert onnx.returncode == 0, onnx.stderr
    by_onnx = {r["key"]: float(r["probability"]) for r in _csv_rows(get("scored/onnx/predictions.csv").decode())}
    assert max(abs(by_onnx[k] - float(scored[k]["probability"])) for k in scored) <= 1e-4


def _request(run, data, output, **kw):
    return predict.Request(run=str(run), data=str(data), output=str(output), **kw)


CFG = load_config(None, environ={})


@pytest.mark.parametrize("case, error, fragment", [
    ("missing run", errors.ModelError, "no gistnet run at"),
    ("run not complete", errors.ModelError, "is not complete (no report.json yet)"),
    ("model not trained", errors.ModelError, "has no model 'resnet50'"),
    ("weights changed", errors.ModelError, "does not match"),
    ("weights missing", errors.ModelError, "model.safetensors does not exist"),
    ("empty data prefix", errors.DataError, "no objects found under"),
    ("no usable image", errors.DataError, "no usable images under"),
    ("onnx not exported", errors.ModelError, "model.onnx does not exist"),
    ("onnx of another model", errors.ModelError, "was exported from other weights"),
])
def test_unusable_model_or_data_fails_before_anything_is_written(case, error, fragment, tiny_runs, exported_run,
                                                                 tiny_data, tmp_path):
    run = copy_run(tiny_runs / "b", tmp_path / "run")
    data, kw = tiny_data, {}
    if case == "missing run":
        run = tmp_path / "nothing-here"
    elif case == "run not complete":
        (run / "report.json").unlink()
    elif case == "model not trained":
        kw["model"] = "resnet50"
    elif case == "weights changed":
        weights = run / "resnet34" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    elif case == "weights missing":
        (run / "resnet34" / "model.safetensors").unlink()
    elif case == "empty data prefix":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "no usable image":
        data = tmp_path / "junk"
        (data / "GIST").mkdir(parents=True)
        (data / "GIST" / "a.png").write_bytes(b"not a png")
    elif case == "onnx not exported":
        kw["engine"] = "onnx"
    elif case == "onnx of another model":
        kw["engine"] = "onnx"
        shutil.copyfile(exported_run / "resnet34" / "model.onnx", run / "resnet34" / "model.onnx")
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        predict.run(_request(run, data, tmp_path / "out", **kw), CFG, scratch=str(tmp_path))
    assert error.exit_code == (errors.EXIT_MODEL if error is errors.ModelError else errors.EXIT_DATA)
    assert not (tmp_path / "out").exists()


def test_cli_reports_an_unusable_model_in_one_line(cli, tiny_runs, tiny_data, tmp_path):
    run = copy_run(tiny_runs / "b", tmp_path / "run")
    (run / "report.json").unlink()
    done = cli("predict", "--run", run, "--data", tiny_data, "--output", tmp_path / "out")
    one_line_error(done, errors.EXIT_MODEL, f"run {run} is not complete")
    assert not (tmp_path / "out").exists()
    usage = cli("predict", "--run", run, "--data", tiny_data, "--output", tmp_path / "out", "--threshold", 2)
    assert usage.returncode == errors.EXIT_USAGE and "--threshold" in usage.stderr


def test_predict_pushes_its_progress_to_the_pushgateway(pushgateway, tiny_runs, tiny_data, tmp_path):
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    cfg = load_config(None, {"metrics.pushgateway": pushgateway, "metrics.job_name": "gistnet-test"}, environ={})
    summary = predict.run(_request(tiny_runs / "a", tiny_data, tmp_path / "out"), cfg, scratch=str(tmp_path))
    assert summary["scored"] == 40 and summary["unusable"] == 0
    with urllib.request.urlopen(f"{pushgateway}/metrics", timeout=5) as r:
        text = r.read().decode()
    samples = {(s.name, s.labels.get("model", ""), s.labels.get("stage", "")): s for f in
               text_string_to_metric_families(text) for s in f.samples if s.labels.get("job") == "gistnet-test"}
    scored = samples[("gistnet_images_scored_total", "resnet34", "")]
    assert scored.value == 40 and scored.labels["mode"] == "predict"
    assert samples[("gistnet_stage_duration_seconds", "resnet34", "score")].value > 0
    assert samples[("gistnet_scored_images_per_second", "resnet34", "")].value > 0
    assert samples[("gistnet_run_exit_code", "", "")].value == 0
