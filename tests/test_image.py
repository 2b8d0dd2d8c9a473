"""The built image, run as the chart runs the pod: root filesystem read-only, only /tmp
writable (a tmpfs), the image's own USER (10001), against the loopback S3 server.

`make image-test` builds the image on a local Debian base (scripts/debian-base.sh,
scripts/build-image.sh) and runs this file with GISTNET_TEST_IMAGE naming it; other runs skip
it. scripts/run-image-readonly.sh does what `podman run --read-only --tmpfs /tmp` would.
"""

import hashlib
import json
import os
import subprocess
import time

import pytest

from gistnet.evidence import report
from tests.conftest import REPO

IMAGE = os.environ.get("GISTNET_TEST_IMAGE", "")
RUNNER = REPO / "scripts" / "run-image-readonly.sh"
PASSED = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")

pytestmark = [pytest.mark.image,
              pytest.mark.skipif(not IMAGE, reason="set GISTNET_TEST_IMAGE (make image-test builds the image)")]


def image_command(*args, setting: tuple[str, ...] = ()) -> list[str]:
    """The runner's command line; ``setting``: extra NAME=VALUE for the job's environment."""
    passed = [a for name in PASSED for a in ("-e", name)] + [a for pair in setting for a in ("-e", pair)]
    return ["bash", str(RUNNER), *passed, IMAGE, *map(str, args)]


def _child(pid: int) -> int | None:
    try:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _ids(pid: int) -> tuple[str, str, str] | None:
    """(cmdline, real UID, real GID) of a live process, or None once it is gone."""
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    except OSError:
        return None
    return cmdline, status["Uid"].split()[0], status["Gid"].split()[0]


def run_watching_ids(args, env, timeout=900) -> tuple[subprocess.CompletedProcess, set[tuple[str, str]]]:
    """Run the image; meanwhile record the (UID, GID) of the gistnet process it becomes (the runner's
    child keeps its PID through unshare, sh, chroot and env, which all exec, up to the image's
    /opt/venv/bin/python running gistnet)."""
    proc = subprocess.Popen(image_command(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[tuple[str, str]] = set()
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        child = _child(proc.pid)
        ids = _ids(child) if child else None
        if ids and ids[0].startswith("/opt/venv/bin/python"):  # the image's interpreter, not the runner
            seen.add(ids[1:])
        time.sleep(0.2)
    try:
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), seen


def test_image_runs_read_only_as_uid_10001_and_writes_report_and_weights_to_s3(bucket, s3_env, s3_client):
    synth, _ = run_watching_ids(["synth", "--output", f"s3://{bucket}/data", "--n-gist", 12, "--n-lm", 12,
                                 "--image-size", 32], s3_env, timeout=300)
    assert synth.returncode == 0, synth.stderr
    train, ids = run_watching_ids(["train", "--data", f"s3://{bucket}/data", "--output", f"s3://{bucket}/runs",
                                   "--run-id", "image", "--models", "resnet34", "--epochs", 1, "--image-size", 32,
                                   "--batch-size", 8, "--device", "cpu"], s3_env)
    assert train.returncode == 0, train.stderr
    assert ids == {("10001", "10001")}, ids  # seen while it ran, and never anything else
    assert train.stdout.strip() == f"s3://{bucket}/runs/image/report.json"
    get = lambda key: s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()  # noqa: E731
    rep = json.loads(get("runs/image/report.json"))
    report.validate(rep)
    assert sum(rep["dataset"]["train"].values()) + sum(rep["dataset"]["val"].values()) == 24
    ckpt = rep["models"]["resnet34"]["checkpoint"]
    weights = get(ckpt["uri"].removeprefix(f"s3://{bucket}/"))
    assert len(weights) == ckpt["bytes"] and hashlib.sha256(weights).hexdigest() == ckpt["sha256"]


def test_image_root_filesystem_is_read_only_and_tmp_writable():
    """Outside /tmp the image's process meets a read-only filesystem (EROFS, not only missing
    permissions); /tmp is its scratch space."""
    from gistnet import errors

    escape = subprocess.run(image_command("synth", "--output", "/opt/gistnet/escape", "--n-gist", 1, "--n-lm", 1,
                                          "--image-size", 32), capture_output=True, text=True, timeout=300)
    assert escape.returncode == errors.EXIT_STORAGE, escape.stderr
    assert "Read-only file system" in escape.stderr and "Traceback" not in escape.stderr
    scratch = subprocess.run(image_command("synth", "--output", "/tmp/data", "--n-gist", 1, "--n-lm", 1,
                                           "--image-size", 32), capture_output=True, text=True, timeout=300)
    assert scratch.returncode == 0 and scratch.stdout.strip() == "/tmp/data", scratch.stderr


def test_image_has_the_mlflow_client(bucket, s3_env):
    """Tracking works in the shipped image (the mlflow extra, mlflow-skinny, is installed): with
    tracking required and no server listening, the job gets as far as connecting and fails on the
    connection (exit 5), not on a missing package."""
    from gistnet import errors
    from tests.conftest import free_port

    synth = subprocess.run(image_command("synth", "--output", f"s3://{bucket}/data", "--n-gist", 6, "--n-lm", 6,
                                         "--image-size", 32), capture_output=True, text=True, env=s3_env, timeout=300)
    assert synth.returncode == 0, synth.stderr
    setting = (f"GISTNET_TRACKING_MLFLOW_URI=http://127.0.0.1:{free_port()}", "GISTNET_TRACKING_REQUIRED=true",
               "MLFLOW_HTTP_REQUEST_MAX_RETRIES=0")
    train = subprocess.run(image_command("train", "--data", f"s3://{bucket}/data", "--output", f"s3://{bucket}/runs",
                                         "--run-id", "tracked", "--models", "resnet34", "--epochs", 1, "--image-size",
                                         32, "--batch-size", 4, "--device", "cpu", setting=setting),
                           capture_output=True, text=True, env=s3_env, timeout=600)
    assert train.returncode == errors.EXIT_STORAGE, train.stderr
    assert "tracking.required is true" in train.stderr and "not installed" not in train.stderr, train.stderr
