"""The run lease (training/lease.py): one live process per (fold, model) unit."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gistnet.config import StorageConfig
from gistnet.data.storage import LocalStore, open_store
from gistnet.errors import EXIT_LEASED, LeaseHeld
from gistnet.training import lease

KEY = "folds/0/resnet34/lease.json"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "run")
    return open_store(f"s3://{request.getfixturevalue('bucket')}/run", StorageConfig())


def elsewhere(n: int) -> dict:
    """The identity of a process on another machine (no PID check applies to it)."""
    return {"host": f"pod-{n}", "pid": 1, "pid_namespace": "4026531836"}


def test_a_renewed_lease_is_waited_for_one_ttl_then_refused_naming_its_holder(store):
    first = lease.Lease(store, KEY, 1.0, "resnet34 fold 0", me=elsewhere(1))
    first.acquire()
    try:
        second = lease.Lease(store, KEY, 1.0, "resnet34 fold 0", me=elsewhere(2))
        start = time.monotonic()
        with pytest.raises(LeaseHeld, match=r"resnet34 fold 0 is being trained by pod-1 \(pid 1\) since ") as held:
            second.acquire()
        assert time.monotonic() - start >= 1.0  # it waited one TTL, during which the holder renewed
        assert held.value.exit_code == EXIT_LEASED == 10
        assert json.loads(store.read(KEY))["host"] == "pod-1" and first.beats >= 2
    finally:
        first.release()
    assert not store.exists(KEY)  # released: the next process takes it at once
    with lease.hold(store, KEY, 1.0, "resnet34 fold 0"):
        assert json.loads(store.read(KEY))["pid"] == os.getpid()


def test_a_lease_that_stops_being_renewed_is_taken_over_after_one_ttl(store, caplog):
    dead = lease.Lease(store, KEY, 1.0, "resnet34 fold 0", me=elsewhere(1))
    dead.acquire()
    dead._stop.set()  # its process froze or its node was lost: no more renewals, no release
    dead._thread.join()
    successor = lease.Lease(store, KEY, 1.0, "resnet34 fold 0", me=elsewhere(2))
    start = time.monotonic()
    successor.acquire()
    try:
        assert time.monotonic() - start >= 1.0
        assert json.loads(store.read(KEY))["host"] == "pod-2"
        assert "took over the lease of pod-1 (pid 1)" in caplog.text and "not renewed for 1s" in caplog.text
    finally:
        successor.release()


def test_a_holder_on_this_host_whose_process_is_gone_is_taken_over_at_once(tmp_path, caplog):
    store = LocalStore(tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    me = lease.identity()
    store.write_bytes(KEY, json.dumps({**me, "pid": int(gone.stdout), "since": "then"}).encode())
    start = time.monotonic()
    with lease.hold(store, KEY, 30, "resnet34 fold 0"):
        assert time.monotonic() - start < 10  # not the 30 s TTL
    assert "its process is gone" in caplog.text
    # A holder in another PID namespace (another container with this host name) is not judged
    # by a PID it does not share: only by its renewals, so it is taken over after the TTL.
    caplog.clear()
    store.write_bytes(KEY, json.dumps({**me, "pid": int(gone.stdout), "pid_namespace": "other"}).encode())
    start = time.monotonic()
    with lease.hold(store, KEY, 1.0, "resnet34 fold 0"):
        assert time.monotonic() - start >= 1.0
    assert "not renewed for 1s" in caplog.text and "its process is gone" not in caplog.text


def test_a_holder_whose_lease_was_taken_over_stops(tmp_path):
    store = LocalStore(tmp_path)
    lost = []
    holder = lease.Lease(store, KEY, 0.6, "resnet34 fold 0", on_lost=lost.append, me=elsewhere(1))
    holder.acquire()
    _, tag = store.read_with_etag(KEY)
    store.write_bytes_if(KEY, json.dumps(elsewhere(2)).encode(), if_match=tag)  # another process took it
    deadline = time.monotonic() + 10
    while not lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lost and "lost its lease" in lost[0] and "pod-2" in lost[0]
    holder.release()
    assert json.loads(store.read(KEY))["host"] == "pod-2"  # not deleted: it is the other's


def _train_args(data, out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "gistnet", "train", "--data", str(data), "--output", str(out), "--run-id", "r",
            "--models", "resnet34", "--epochs", str(epochs), "--image-size", "32", "--batch-size", "16",
            "--checkpoint-every", "1", "--augmentation", "none", "--device", "cpu"]


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_a_second_train_of_a_unit_never_trains_while_the_first_lives_and_resumes_once_it_is_gone(
        how, tiny_data, tmp_path):
    """Two ``gistnet train`` of one unit (same run id, same (fold, model)): the second waits one
    TTL while the first renews its lease, then exits 10 without training; the first is then
    SIGKILLed (its process gone: the next one takes over at once) or SIGSTOPped (alive but no
    longer renewing, like a lost node: taken over after one TTL), and a third train resumes
    from the first's checkpoint and completes the run."""
    env = {**os.environ, "GISTNET_OUTPUT_LEASE_TTL_S": "3", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = _train_args(tiny_data, tmp_path, 12)
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "r" / "resnet34" / "checkpoint.json").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first train ended before a checkpoint"
            time.sleep(0.05)
        second = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
        assert first.poll() is None, "the first train finished before the second gave up: the test proves nothing"
        assert second.returncode == EXIT_LEASED, second.stderr
        assert f"(pid {first.pid})" in second.stderr and "resnet34 is being trained by" in second.stderr
        assert "epoch 1/" not in second.stderr and "Traceback" not in second.stderr  # it never trained
        assert second.stderr.strip().splitlines()[-1].startswith("gistnet: unit leased: ")
        first.send_signal(getattr(signal, how))
        if how == "SIGKILL":
            first.wait(timeout=60)
        third = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
        assert third.returncode == 0, third.stderr
        assert f"took over the lease of {os.uname().nodename} (pid {first.pid})" in third.stderr
        assert ("its process is gone" if how == "SIGKILL" else "not renewed for 3s") in third.stderr
    finally:
        first.kill()
        first.communicate(timeout=60)
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["status"] == "complete" and rep["models"]["resnet34"]["resumed_from_epoch"] >= 1
    assert not (tmp_path / "r" / "resnet34" / "lease.json").exists()  # released when the unit ended
