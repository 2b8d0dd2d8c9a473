"""A real MLflow tracking server on loopback for the tests: SQLite backend, artifacts proxied by
the server to the loopback SeaweedFS (``--artifacts-destination s3://...``).

Import the fixture into a test module: ``from tests.mlflowserver import mlflow_server  # noqa: F401``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_http


def mlflow_binary() -> str | None:
    return shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")


@contextlib.contextmanager
def serve(workdir: Path, bucket: str, s3_env: dict):
    """An ``mlflow server`` on a free loopback port (SQLite in ``workdir``, artifacts to
    ``s3://<bucket>/mlflow``) until the block ends; yields its URI."""
    pytest.importorskip("mlflow")
    binary = mlflow_binary()
    port = free_port()
    env = {**s3_env, "MLFLOW_S3_ENDPOINT_URL": s3_env["AWS_ENDPOINT_URL"]}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(workdir / "mlflow-server.log", "wb")
    proc = subprocess.Popen([binary, "server", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
                             "--artifacts-destination", f"s3://{bucket}/mlflow", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 120, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        log.close()


@pytest.fixture
def mlflow_server(tmp_path, bucket, s3_env):
    """The URI of a fresh MLflow server whose artifacts go to ``s3://<bucket>/mlflow``."""
    with serve(tmp_path, bucket, s3_env) as uri:
        yield uri


@pytest.fixture(scope="module")
def module_mlflow(s3_endpoint, tmp_path_factory):
    """One MLflow server for a whole test module (its start and stop take seconds): ``(uri,
    bucket, env)``. Tests that share it keep apart by their own experiment and model prefix."""
    import boto3

    from tests.conftest import TEST_KEY, TEST_SECRET

    env = dict(os.environ)
    if not os.environ.get("GISTNET_TEST_S3_ENDPOINT"):
        env.update(AWS_ACCESS_KEY_ID=TEST_KEY, AWS_SECRET_ACCESS_KEY=TEST_SECRET)
    env.update(AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=s3_endpoint)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3"):
        env.pop(name, None)
    bucket = f"gistnet-mlflow-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1").create_bucket(Bucket=bucket)
    with serve(tmp_path_factory.mktemp("mlflow"), bucket, env) as uri:
        yield uri, bucket, env
    leftover = boto3.resource("s3", endpoint_url=s3_endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1").Bucket(bucket)
    leftover.objects.all().delete()  # the registered models: free the disk
    leftover.delete()
