"""The command line as users run it: exit codes, one-line errors, the S3 round trip."""

import hashlib
import json

import pytest
import yaml

from gistnet import errors, report

pytestmark = pytest.mark.e2e


def test_train_against_loopback_s3_end_to_end(cli, bucket, s3_client, s3_env):
    seeded = cli("synth", "--output", f"s3://{bucket}/data", "--n-gist", 20, "--n-lm", 20, "--image-size", 32,
                 env=s3_env)
    assert seeded.returncode == 0, seeded.stderr
    done = cli("train", "--data", f"s3://{bucket}/data", "--output", f"s3://{bucket}/runs", "--run-id", "e2e",
               "--epochs", 1, "--image-size", 32, "--batch-size", 16, env=s3_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"s3://{bucket}/runs/e2e/report.json"
    get = lambda key: s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()  # noqa: E731
    rep = json.loads(get("runs/e2e/report.json"))
    report.validate(rep)
    assert rep["dataset"]["train"] == {"GIST": 16, "LM": 16} and rep["dataset"]["val"] == {"GIST": 4, "LM": 4}
    assert set(rep["models"]) == {"resnet34", "resnet50"}
    for name, m in rep["models"].items():
        key = m["checkpoint"]["uri"].removeprefix(f"s3://{bucket}/")
        body = get(key)
        assert hashlib.sha256(body).hexdigest() == m["checkpoint"]["sha256"]
        assert len(body) == m["checkpoint"]["bytes"]
    split = json.loads(get("runs/e2e/split.json"))
    assert len(split["train"]) == 32 and len(split["val"]) == 8
    assert yaml.safe_load(get("runs/e2e/config.yaml"))["train"]["epochs"] == 1
    again = cli("train", "--data", f"s3://{bucket}/data", "--output", f"s3://{bucket}/runs", "--run-id", "e2e",
                "--epochs", 1, "--image-size", 32, "--batch-size", 16, env=s3_env)
    assert again.returncode == 0 and "already complete" in again.stderr


def _one_line_error(done, code, fragment):
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("gistnet: ")]
    assert len(lines) == 1 and fragment in lines[0], done.stderr


def test_config_errors(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    _one_line_error(cli("config", "--config", bad), errors.EXIT_CONFIG, "unknown key train.epochz")
    _one_line_error(cli("train", "--data", tmp_path, "--output", tmp_path, "--epochs", 0), errors.EXIT_CONFIG,
                    "train.epochs must be >= 1")
    _one_line_error(cli("train", "--data", tmp_path), errors.EXIT_CONFIG, "no output URI")


def test_config_command_prints_resolved_yaml(cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 5\n")
    env = {**__import__("os").environ, "GISTNET_TRAIN_BATCH_SIZE": "4"}
    done = cli("config", "--config", cfg, "--seed", 3, env=env)
    resolved = yaml.safe_load(done.stdout)
    assert resolved["train"]["epochs"] == 5 and resolved["train"]["batch_size"] == 4 and resolved["train"]["seed"] == 3


def test_data_errors(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(cli("train", "--data", empty, "--output", tmp_path / "o", "--device", "cpu"),
                    errors.EXIT_DATA, "no objects found")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("report.json"))


def test_missing_bucket_and_endpoint_down(cli, s3_env, tmp_path):
    _one_line_error(cli("train", "--data", "s3://gistnet-no-such-bucket/x", "--output", tmp_path, env=s3_env),
                    errors.EXIT_STORAGE, "bucket 'gistnet-no-such-bucket' does not exist")
    from tests.conftest import free_port
    env = {**s3_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "GISTNET_STORAGE_MAX_ATTEMPTS": "2",
           "GISTNET_STORAGE_CONNECT_TIMEOUT": "1"}
    _one_line_error(cli("train", "--data", "s3://b/x", "--output", tmp_path, env=env), errors.EXIT_STORAGE,
                    "cannot reach S3 endpoint")


def test_cuda_without_gpu(cli, tiny_data, tmp_path):
    env = {**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""}
    _one_line_error(cli("train", "--data", tiny_data, "--output", tmp_path, "--device", "cuda", env=env),
                    errors.EXIT_DEVICE, "no CUDA GPU")


def test_exit_code_table_matches_readme(cli):
    readme = (__import__("pathlib").Path(__file__).resolve().parents[1] / "README.md").read_text()
    for code, meaning in errors.EXIT_CODES.items():
        assert f"| {code} |" in readme, f"exit code {code} missing from README"
