"""Shared fixtures: a real S3 server on loopback, small synthetic data sets, CLI runners.

Set ``GISTNET_TEST_S3_ENDPOINT`` (with AWS credentials in the environment) to run the same
tests against a real MinIO instead of the in-process moto server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """An S3 endpoint on loopback: moto's threaded server, or GISTNET_TEST_S3_ENDPOINT."""
    external = os.environ.get("GISTNET_TEST_S3_ENDPOINT")
    if external:
        yield external
        return
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """Environment for boto3 in this process and in CLI subprocesses."""
    if not os.environ.get("GISTNET_TEST_S3_ENDPOINT"):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    return dict(os.environ)


@pytest.fixture
def bucket(s3_env):
    """A fresh, empty bucket; its name."""
    import boto3

    name = f"gistnet-test-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_client(s3_env):
    import boto3

    return boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small local synthetic data set (32 px): 20 GIST, 20 LM."""
    from gistnet import synth
    from gistnet.storage import LocalStore

    root = tmp_path_factory.mktemp("tiny-data")
    synth.write_dataset(LocalStore(root), 20, 20, 32, seed=1)
    return root


def run_cli(*args, env=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    """Run ``python -m gistnet`` as a user would; returns the completed process."""
    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.run([sys.executable, "-m", "gistnet", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd)


@pytest.fixture
def cli():
    return run_cli
