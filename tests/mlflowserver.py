"""A real MLflow tracking server on loopback for the tests: SQLite backend, artifacts proxied by
the server to the loopback SeaweedFS (``--artifacts-destination s3://...``).

Import the fixture into a test module: ``from tests.mlflowserver import mlflow_server  # noqa: F401``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_http


def mlflow_binary() -> str | None:
    return shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")


@pytest.fixture
def mlflow_server(tmp_path, bucket, s3_env):
    """The URI of a fresh MLflow server whose artifacts go to ``s3://<bucket>/mlflow``."""
    pytest.importorskip("mlflow")
    binary = mlflow_binary()
    port = free_port()
    env = {**s3_env, "MLFLOW_S3_ENDPOINT_URL": s3_env["AWS_ENDPOINT_URL"]}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(tmp_path / "mlflow-server.log", "wb")
    proc = subprocess.Popen([binary, "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                             "--artifacts-destination", f"s3://{bucket}/mlflow", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
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
