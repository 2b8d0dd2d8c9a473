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


def _upload(s3_client, bucket: str, root, prefix: str) -> None:
    """A local folder's files under ``prefix`` (a run's resumable checkpoints left out: predict never reads them)."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith("checkpoint-epoch"):
            s3_client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(root).as_posix()}",
                                 Body=path.read_bytes())


def test_predict_over_s3_reproduces_the_runs_validation_probabilities(cli, bucket, s3_client, s3_env, tiny_runs,
                                                                       tiny_data, tmp_path):
    """The session's run ``a`` and its data, in a bucket (training over S3: test_cli.py)."""
    from gistnet.data import synth

    get = lambda key: s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()  # noqa: E731
    _upload(s3_client, bucket, tiny_data, "data")
    _upload(s3_client, bucket, tiny_runs / "a", "runs/a")
    data, run = f"s3://{bucket}/data", f"s3://{bucket}/runs/a"
    report = json.loads(get("runs/a/report.json"))

    # the run's own images, class folders present: labels come out; the metrics are not an evaluation
    own = cli("predict", "--run", run, "--data", data, "--output", f"s3://{bucket}/scored/own",
              "--include-development", env=s3_env)
    assert own.returncode == 0, own.stderr
    assert own.stdout.strip() == f"s3://{bucket}/scored/own/predictions.json"
    scored = {r["key"]: r for r in _csv_rows(get("scored/own/predictions.csv").decode())}
    assert len(scored) == 40
    recorded = _recorded_probabilities(get("runs/a/predictions.csv").decode(), "resnet34")
    val_keys = json.loads(get("runs/a/split.json"))["val"]
    assert sorted(recorded) == sorted(val_keys)
    difference = max(abs(float(scored[k]["probability"]) - recorded[k]) for k in val_keys)
    assert difference <= 1e-6, difference
    result = json.loads(get("scored/own/predictions.json"))
    sha = report["models"]["resnet34"]["checkpoint"]["sha256"]
    identity = (result["run_id"], result["model"], result["weights_sha256"], result["threshold"])
    assert identity == ("a", "resnet34", sha, 0.5)
    assert result["evaluation"] is None and result["counts"]["development"] == 40
    assert result["evaluation_note"].startswith("n/a: all 40 labelled images are the run's development images")
    apart = result["development_evaluation"]
    assert apart["counts"] == {"GIST": 20, "LM": 20} and apart["note"].startswith("NOT AN EVALUATION")
    assert sum(apart["confusion_matrix"].values()) == 40
    assert apart["ci_method"] == "wilson" and "ci_low" in apart["metrics"]["sensitivity"]
    row = scored[val_keys[0]]
    assert (row["model"], row["weights_sha256"], row["run_id"]) == ("resnet34", sha, "a")
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
    ("onnx without its sidecar", errors.ModelError, "model.onnx.json does not exist"),
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
        for name in ("model.onnx", "model.onnx.json"):
            shutil.copyfile(exported_run / "resnet34" / name, run / "resnet34" / name)
    elif case == "onnx without its sidecar":
        kw["engine"] = "onnx"
        run = copy_run(exported_run, tmp_path / "run-a", "resnet34/model.onnx")
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        predict.run(_request(run, data, tmp_path / "out", **kw), CFG, scratch=str(tmp_path))
    assert error.exit_code == (errors.EXIT_MODEL if error is errors.ModelError else errors.EXIT_DATA)
    assert not (tmp_path / "out").exists()


def test_an_onnx_file_with_edited_weights_and_untouched_metadata_is_refused(cli, exported_run, tiny_data, tmp_path):
    """The file is checked against the sha256 its sidecar records, not only its own metadata."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    run = copy_run(exported_run, tmp_path / "run", "resnet34/model.onnx", "resnet34/model.onnx.json")
    path = run / "resnet34" / "model.onnx"
    proto = onnx.load(str(path))
    metadata = {p.key: p.value for p in proto.metadata_props}
    fc = [t for t in proto.graph.initializer if "fc" in t.name and "weight" in t.name]
    assert len(fc) == 1, [t.name for t in proto.graph.initializer if "fc" in t.name]
    weights = numpy_helper.to_array(fc[0])
    fc[0].CopyFrom(numpy_helper.from_array((weights + np.float32(0.5)).astype(weights.dtype), fc[0].name))
    onnx.save(proto, str(path))
    assert {p.key: p.value for p in onnx.load(str(path)).metadata_props} == metadata  # metadata untouched

    done = cli("predict", "--run", run, "--data", tiny_data, "--output", tmp_path / "out", "--engine", "onnx")
    one_line_error(done, errors.EXIT_MODEL, f"{path}: sha256 ")
    assert "model.onnx: sha256" in done.stderr and "does not match the" in done.stderr
    assert "recorded in model.onnx.json" in done.stderr
    assert not (tmp_path / "out").exists()


def _re_encoded(png: bytes, fmt: str) -> bytes:
    """The same pixels in another file: a PNG re-saved with other compression, or a BMP."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        out = io.BytesIO()
        img.save(out, format=fmt, **({"compress_level": 0} if fmt == "PNG" else {}))
    assert out.getvalue() != png
    return out.getvalue()


def test_the_runs_own_images_are_excluded_from_the_metrics_even_re_encoded(tiny_runs, tiny_data, tmp_path):
    from gistnet.data import dataset, fingerprint, synth

    run = copy_run(tiny_runs / "a", tmp_path / "run", "fingerprints.json")
    # the run recorded its development images (training + validation) by the pixels the model saw
    split = json.loads((run / "split.json").read_text())
    recorded = fingerprint.read_fingerprints(LocalStore(run))
    assert sorted(recorded.values()) == sorted(split["train"] + split["val"]) and len(recorded) == 40
    for digest, key in recorded.items():
        assert fingerprint.pixel_digest(dataset.decode_pixels((tiny_data / key).read_bytes(), 32, 10**8)) == digest

    # new images, plus five of the run's own: three re-saved PNGs and two BMPs under new names
    data = tmp_path / "mixed"
    synth.write_dataset(LocalStore(data), 6, 6, 32, seed=7)
    own = {"GIST/copy-0.png": ("GIST/gist_0000.png", "PNG"), "GIST/copy-1.png": ("GIST/gist_0003.png", "PNG"),
           "LM/copy-2.png": ("LM/lm_0004.png", "PNG"), "LM/copy-3.bmp": ("LM/lm_0001.png", "BMP"),
           "GIST/copy-4.bmp": ("GIST/gist_0007.png", "BMP")}
    for key, (source, fmt) in own.items():
        (data / key).write_bytes(_re_encoded((tiny_data / source).read_bytes(), fmt))

    summary = predict.run(_request(run, data, tmp_path / "out"), CFG, scratch=str(tmp_path))
    result = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert result["counts"] == {"scored": 17, "unusable": 0, "development": 5} and summary["development"] == 5
    assert {r["key"]: r["development_key"] for r in result["predictions"] if r["development_key"]} == \
        {k: source for k, (source, _) in own.items()}
    assert result["development_data"]["excluded_from_evaluation"] == 5
    assert result["evaluation"]["counts"] == {"GIST": 6, "LM": 6}  # the new images only
    assert sum(result["evaluation"]["confusion_matrix"].values()) == 12
    assert result["evaluation_note"].startswith("over the 12 labelled images not in the run's development data; "
                                                "5 excluded")
    assert "development_evaluation" not in result
    rows = _csv_rows((tmp_path / "out" / "predictions.csv").read_text())
    assert {r["key"]: r["development_key"] for r in rows if r["development_key"]} == \
        {k: source for k, (source, _) in own.items()}

    # --include-development: the run's own images reported apart, marked as not an evaluation
    predict.run(_request(run, data, tmp_path / "out2", include_development=True), CFG, scratch=str(tmp_path))
    result = json.loads((tmp_path / "out2" / "predictions.json").read_text())
    assert result["evaluation"]["counts"] == {"GIST": 6, "LM": 6}
    apart = result["development_evaluation"]
    assert apart["note"].startswith("NOT AN EVALUATION") and apart["counts"] == {"GIST": 3, "LM": 2}


def test_on_the_runs_own_data_folder_every_image_is_excluded_and_metrics_are_na(cli, tiny_runs, tiny_data, tmp_path):
    run = copy_run(tiny_runs / "a", tmp_path / "run", "fingerprints.json")
    done = cli("predict", "--run", run, "--data", tiny_data, "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "40 of 40 scored images are run a's development images" in done.stderr  # the warning names the count
    assert "metrics n/a: all 40 labelled images are the run's development images" in done.stderr
    result = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert result["evaluation"] is None and result["counts"]["development"] == 40
    assert result["evaluation_note"].startswith("n/a: all 40 labelled images are the run's development images")
    assert all(r["development_key"] == r["key"] for r in result["predictions"])

    shown = cli("predict", "--run", run, "--data", tiny_data, "--output", tmp_path / "out2", "--include-development")
    assert shown.returncode == 0, shown.stderr
    result = json.loads((tmp_path / "out2" / "predictions.json").read_text())
    assert result["evaluation"] is None and result["development_evaluation"]["counts"] == {"GIST": 20, "LM": 20}
    assert "NOT AN EVALUATION" in shown.stderr and "accuracy" in shown.stderr


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


def test_predict_on_a_run_keyed_from_the_environment_refuses_without_that_key(cli, tiny_runs, tiny_data, tmp_path):
    import os

    from gistnet.data import privacy

    run = copy_run(tiny_runs / "a", tmp_path / "run")
    key = "the-chart-secret-0123456789abcdef"
    keyed = privacy.for_run(LocalStore(run), False, environ={privacy.ENV_KEY: key})
    keyed.patient("MRN123")  # the run pseudonymized patient ids with the environment key
    keyed.save(LocalStore(run))
    env = {k: v for k, v in os.environ.items() if k != privacy.ENV_KEY}
    done = cli("predict", "--run", run, "--data", tiny_data, "--output", tmp_path / "out", env=env)
    one_line_error(done, errors.EXIT_CONFIG, f"run {run} was keyed with GISTNET_PSEUDONYM_KEY")
    assert "set GISTNET_PSEUDONYM_KEY to that key" in done.stderr and not (tmp_path / "out").exists()
    other = cli("predict", "--run", run, "--data", tiny_data, "--output", tmp_path / "out",
                env={**env, privacy.ENV_KEY: "another-secret-0123456789abcdef"})
    one_line_error(other, errors.EXIT_CONFIG, "GISTNET_PSEUDONYM_KEY is not the key run")
    assert not (tmp_path / "out").exists()
