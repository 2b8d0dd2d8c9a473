"""Nothing leaks, nothing runs: credentials stay out of every output, objects from a bucket
never execute code or choose local paths, and the job runs on a read-only root filesystem."""

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import urllib.request

import pytest

from gistnet.errors import EXIT_CONFIG
from gistnet.observe.metrics import LAST_SUCCESS
from tests.conftest import SENTINEL_KEY, SENTINEL_SECRET

pytestmark = pytest.mark.e2e


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('PWNED_MARKER', '/tmp/gistnet-pwned')}",))


def _all_objects(s3_client, bucket, prefix=""):
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            yield o["Key"], s3_client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()


def test_no_credential_in_logs_report_config_objects_or_metrics(cli, bucket, s3_env, s3_client,
                                                                 pushgateway_with_auth):
    """AWS keys in the environment and a password in the Pushgateway URL: the push
    authenticates, and no log line, stored object or pushed metric holds any of them."""
    from tests.conftest import PUSHGATEWAY_PASSWORD, PUSHGATEWAY_USER, basic_auth_header

    if os.environ.get("GISTNET_TEST_S3_ENDPOINT"):
        pytest.skip("needs a server that knows the sentinel key pair (the loopback SeaweedFS lists it)")
    gateway, bare = pushgateway_with_auth
    env = {**s3_env, "AWS_ACCESS_KEY_ID": SENTINEL_KEY, "AWS_SECRET_ACCESS_KEY": SENTINEL_SECRET}
    outputs = [cli("synth", "--output", f"s3://{bucket}/data", "--n-gist", 10, "--n-lm", 10, "--image-size", 32,
                   env=env)]
    outputs.append(cli("-v", "train", "--data", f"s3://{bucket}/data", "--output", f"s3://{bucket}/runs", "--run-id",
                       "s", "--models", "resnet34", "--epochs", 1, "--image-size", 32, "--batch-size", 16,
                       "--pushgateway", gateway, env=env))
    assert outputs[-1].returncode == 0, outputs[-1].stderr
    outputs.append(cli("train", "--data", "s3://gistnet-missing-bucket/x", "--output", f"s3://{bucket}/runs",
                       "--pushgateway", gateway, env=env))
    assert outputs[-1].returncode == 5
    outputs.append(cli("config", "--pushgateway", gateway, env=env))
    assert outputs[-1].returncode == 0 and f"pushgateway: {bare}" in outputs[-1].stdout
    request = urllib.request.Request(f"{bare}/metrics", headers=basic_auth_header(PUSHGATEWAY_USER,
                                                                                  PUSHGATEWAY_PASSWORD))
    with urllib.request.urlopen(request, timeout=5) as r:
        metrics = r.read()
    from prometheus_client.parser import text_string_to_metric_families

    pushed = {s.name: s.value for f in text_string_to_metric_families(metrics.decode()) for s in f.samples
              if s.labels.get("job") == "gistnet"}
    assert pushed["gistnet_run_exit_code"] == 5 and pushed[LAST_SUCCESS] > 0  # both pushes authenticated
    objects = dict(_all_objects(s3_client, bucket, "runs/"))
    assert {"runs/s/config.yaml", "runs/s/report.json", "runs/s/report.md"} <= set(objects)
    blobs = [o.stdout.encode() + o.stderr.encode() for o in outputs] + [metrics] + list(objects.values())
    assert len(blobs) > 8
    for needle in (SENTINEL_KEY, SENTINEL_SECRET, SENTINEL_SECRET.split("/")[1], PUSHGATEWAY_PASSWORD):
        for blob in blobs:
            assert needle.encode() not in blob


def test_malicious_checkpoint_in_the_bucket_is_never_loaded(cli, bucket, s3_env, s3_client, tiny_data, tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({"model": Evil(), "epoch": 1})
    s3_client.put_object(Bucket=bucket, Key="runs/m/resnet34/checkpoint-epoch0001.pt", Body=blob)
    pointer = {"key": "resnet34/checkpoint-epoch0001.pt", "epoch": 1, "sha256": hashlib.sha256(blob).hexdigest(),
               "bytes": len(blob)}
    s3_client.put_object(Bucket=bucket, Key="runs/m/resnet34/checkpoint.json", Body=json.dumps(pointer).encode())
    done = cli("train", "--data", tiny_data, "--output", f"s3://{bucket}/runs", "--run-id", "m", "--models",
               "resnet34", "--epochs", 2, "--image-size", 32, env={**s3_env, "PWNED_MARKER": str(marker)})
    assert done.returncode == 5, done.stderr
    assert "refusing to resume" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()


def test_object_keys_never_become_local_paths(cli, moto_s3_env, tmp_path):
    """moto, not SeaweedFS: SeaweedFS and MinIO refuse to store a key with ``..`` segments
    (InvalidRequest), AWS S3 stores it, so only an S3 that accepts it can test the job's guard."""
    import boto3

    s3_env, s3_client, bucket = moto_s3_env, boto3.client("s3"), "gistnet-evil-keys"
    s3_client.create_bucket(Bucket=bucket)
    assert cli("synth", "--output", f"s3://{bucket}/data", "--n-gist", 8, "--n-lm", 8, "--image-size", 32,
               env=s3_env).returncode == 0
    png = s3_client.get_object(Bucket=bucket, Key="data/GIST/gist_0000.png")["Body"].read()
    target = tmp_path / "escaped.png"
    evil_key = "data/GIST/../../../../../../.." + str(target)
    s3_client.put_object(Bucket=bucket, Key=evil_key, Body=png)
    done = cli("train", "--data", f"s3://{bucket}/data", "--output", tmp_path / "out", "--run-id", "k", "--models",
               "resnet34", "--epochs", 1, "--image-size", 32, env=s3_env)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "k" / "report.json").read_text())
    reasons = [s["reason"] for s in report["dataset"]["skipped"]]
    assert any("unsafe object key" in r for r in reasons), report["dataset"]["skipped"]
    assert not target.exists()


def test_init_weights_that_would_run_code_are_a_config_error(cli, tiny_data, tmp_path):
    """A weights file (train.init_weights) holding a pickle that runs code: exit 3, nothing run."""
    marker = tmp_path / "pwned"
    weights = tmp_path / "evil.pt"
    weights.write_bytes(pickle.dumps({"conv1.weight": Evil()}))
    done = cli("train", "--data", tiny_data, "--output", tmp_path / "out", "--run-id", "w", "--models", "resnet34",
               "--epochs", 1, "--image-size", 32, "--augmentation", "none", "--device", "cpu",
               env={**os.environ, "GISTNET_TRAIN_INIT_WEIGHTS": f"resnet34={weights}", "PWNED_MARKER": str(marker)})
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "not loadable as weights without executing code" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()
    assert not (tmp_path / "out" / "w" / "report.json").exists()


# Pseudo file systems stay as the container runtime mounts them (Kubernetes does the same).
RUNTIME_MOUNTS = ("/proc", "/sys", "/dev")

# Runs inside the private mount namespace: every other mount read-only, then the scratch
# tmpfs; then proof, not hope: a write to / must fail and no other mount may be writable.
READ_ONLY_SCRIPT = r"""
set -eu
mount --make-rprivate /
for target in $(awk '{print $5}' /proc/self/mountinfo | sort -r); do
    case "$target" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac
    mount -o remount,bind,ro "$target"
done
mount -t tmpfs tmpfs "$SCRATCH"
if touch /gistnet-write-probe 2>/dev/null; then echo "ROOT-WRITABLE"; exit 97; fi
writable=$(awk -v scratch="$SCRATCH" '$5 != scratch && $5 !~ "^/(proc|sys|dev)(/|$)" && $6 !~ /(^|,)ro(,|$)/ {print $5}' /proc/self/mountinfo)
if [ -n "$writable" ]; then echo "WRITABLE-MOUNTS: $writable"; exit 98; fi
echo "ROOT-READ-ONLY"
exec "$@"
"""


def _mount_namespaces_allowed() -> str:
    """'' when this process may make a private mount namespace, else why not."""
    if sys.platform != "linux":
        return "mount namespaces are Linux-only"
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return "needs root and unshare(1) to make / read-only in a private mount namespace"
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"mount namespaces not allowed here: {probe.stderr.strip()}"
    return ""


def test_runs_with_a_read_only_root_filesystem(bucket, s3_env, tiny_data, tmp_path, s3_client):
    """As in the chart: everything read-only except one scratch dir (an emptyDir at /tmp there)."""
    why_not = _mount_namespaces_allowed()
    if why_not:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to run this test: {why_not}")
        pytest.skip(why_not)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**s3_env, "TMPDIR": str(scratch), "HOME": str(scratch), "MPLCONFIGDIR": str(scratch / "mpl"),
           "XDG_CACHE_HOME": str(scratch / "cache"), "PYTHONDONTWRITEBYTECODE": "1", "SCRATCH": str(scratch)}
    train = [sys.executable, "-m", "gistnet", "train", "--data", str(tiny_data), "--output", f"s3://{bucket}/ro",
             "--run-id", "ro", "--models", "resnet34", "--epochs", 1, "--image-size", 32, "--batch-size", 16]
    done = subprocess.run(["unshare", "-m", "sh", "-c", READ_ONLY_SCRIPT, "sh", *map(str, train)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.stdout.splitlines()[:1] == ["ROOT-READ-ONLY"], (done.returncode, done.stdout, done.stderr)
    assert done.returncode == 0, done.stderr
    s3_client.head_object(Bucket=bucket, Key="ro/ro/report.json")
