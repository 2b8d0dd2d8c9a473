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
from tests.conftest import NO_GALLERY, wait_until

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
        assert time.monotonic() - start < 15  # one renewal interval (7.5 s) unrenewed, not the 30 s TTL
    assert "its process is gone" in caplog.text
    # A holder in another PID namespace (another container with this host name) is not judged
    # by a PID it does not share: only by its renewals, so it is taken over after the TTL.
    caplog.clear()
    store.write_bytes(KEY, json.dumps({**me, "pid": int(gone.stdout), "pid_namespace": "other"}).encode())
    start = time.monotonic()
    with lease.hold(store, KEY, 1.0, "resnet34 fold 0"):
        assert time.monotonic() - start >= 1.0
    assert "not renewed for 1s" in caplog.text and "its process is gone" not in caplog.text


def test_a_holder_on_this_host_whose_process_lives_but_stopped_renewing_is_taken_over_after_one_ttl(tmp_path, caplog):
    """A stopped process (SIGSTOP, like a hung node) still exists: its PID says nothing, so only
    its missing renewals count, and the lease is taken over after the TTL, not at once."""
    store = LocalStore(tmp_path)
    stopped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stopped.send_signal(signal.SIGSTOP)
        store.write_bytes(KEY, json.dumps({**lease.identity(), "pid": stopped.pid, "since": "then"}).encode())
        start = time.monotonic()
        with lease.hold(store, KEY, 1.0, "resnet34 fold 0"):
            assert time.monotonic() - start >= 1.0
    finally:
        stopped.kill()
        stopped.wait(timeout=30)
    assert "not renewed for 1s" in caplog.text and "its process is gone" not in caplog.text


def _gone_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def test_a_live_holder_on_another_machine_with_this_host_name_and_namespace_is_not_taken_over(tmp_path, caplog):
    """An Indexed Job's replacement pod reuses ``<job>-<index>`` as its host name, and PID
    namespace inodes can coincide across nodes: a holder with this host name, namespace inode
    and a PID that does not exist here, but another boot id and still renewing, is alive."""
    store = LocalStore(tmp_path)
    me = lease.identity()
    assert me["boot_id"]  # Linux gives one
    twin = {**me, "pid": _gone_pid(), "boot_id": "another-node"}
    holder = lease.Lease(store, KEY, 1.0, "resnet34 fold 0", on_lost=lambda m: None, me=twin)
    holder.acquire()
    try:
        with pytest.raises(LeaseHeld, match="renewed within the last 1s"):
            lease.Lease(store, KEY, 1.0, "resnet34 fold 0").acquire()
        # The same holder on this very machine (same boot id) but renewing: still alive.
        holder.me = {**twin, "boot_id": me["boot_id"]}
        time.sleep(0.5)  # a renewal carries the new identity
        with pytest.raises(LeaseHeld):
            lease.Lease(store, KEY, 1.0, "resnet34 fold 0").acquire()
    finally:
        holder.release()
    assert "took over" not in caplog.text


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
    # it renewed in time; it only lost the lease to a takeover: no claim that it did not renew
    assert "did not renew" not in lost[0] and "its last renewal that landed was sent" in lost[0]
    holder.release()
    assert json.loads(store.read(KEY))["host"] == "pod-2"  # not deleted: it is the other's


def _train_args(data, out: Path, epochs: int, image_size: int = 32, checkpoint_every: int = 1) -> list[str]:
    return [sys.executable, "-m", "gistnet", "train", "--data", str(data), "--output", str(out), "--run-id", "r",
            "--models", "resnet34", "--epochs", str(epochs), "--image-size", str(image_size), "--batch-size", "16",
            "--checkpoint-every", str(checkpoint_every), "--augmentation", "none", "--device", "cpu"]


@pytest.mark.e2e
def test_a_second_train_of_a_unit_never_trains_while_the_first_lives_and_resumes_once_it_is_gone(
        tiny_data, tmp_path):
    """Trains of one unit (same run id, same (fold, model)) one after another: the second waits one
    TTL while the first renews its lease, then exits 10 without training. The first is then
    SIGSTOPped (alive but no longer renewing, like a lost node): a third takes over after one TTL
    and resumes from the first's checkpoint. The third is SIGKILLed while it trains (its process
    gone): a fourth takes over at once, resumes and completes the run. (Both takeovers in one
    sequence: they were two tests that each trained a first and a second train of their own.)"""
    # A TTL a loaded 2-core machine keeps: a holder that cannot renew within 0.8 TTL stops itself (exit 10).
    env = {**os.environ, **NO_GALLERY, "GISTNET_OUTPUT_LEASE_TTL_S": "10", "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    # Long enough that the first is still training when the second gives up after one TTL on an idle
    # machine too (12 epochs at 32 px finished first there), with few 255 MB checkpoints.
    args = _train_args(tiny_data, tmp_path, 40, image_size=64, checkpoint_every=5)
    unit = tmp_path / "r" / "resnet34"
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    third = None
    try:
        wait_until("the first train's checkpoint", lambda: _checkpoint(unit) is not None, first)
        second = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
        assert first.poll() is None, "the first train finished before the second gave up: the test proves nothing"
        assert second.returncode == EXIT_LEASED, second.stderr
        assert f"(pid {first.pid})" in second.stderr and "resnet34 is being trained by" in second.stderr
        assert "epoch 1/" not in second.stderr and "Traceback" not in second.stderr  # it never trained
        assert second.stderr.strip().splitlines()[-1].startswith("gistnet: unit leased: ")

        first.send_signal(signal.SIGSTOP)
        resumed_from = _checkpoint(unit)
        third = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        wait_until("the third train's own checkpoint",
                   lambda: f'"pid": {third.pid}' in _read(unit / "lease.json")
                   and _checkpoint(unit) not in (None, resumed_from),
                   third, timeout_s=600)
        third.kill()
        _, third_err = third.communicate(timeout=60)
        assert f"took over the lease of {os.uname().nodename} (pid {first.pid})" in third_err
        assert "not renewed for 10s" in third_err and "resumed from" in third_err

        fourth = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
        assert fourth.returncode == 0, fourth.stderr
        assert f"took over the lease of {os.uname().nodename} (pid {third.pid})" in fourth.stderr
        assert "its process is gone" in fourth.stderr
    finally:
        for proc in filter(None, (first, third)):
            proc.kill()
            proc.communicate(timeout=60)
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["status"] == "complete" and rep["models"]["resnet34"]["resumed_from_epoch"] >= 1
    assert not (unit / "lease.json").exists()  # released when the unit ended


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _checkpoint(unit: Path) -> str | None:
    """The checkpoint the unit's pointer names; None before the first (a lease's stub names none)."""
    try:
        return json.loads(_read(unit / "checkpoint.json") or "{}").get("key")
    except ValueError:  # read while it was being replaced
        return None


POINTER = "folds/0/resnet34/checkpoint.json"


def test_a_holder_whose_renewals_fail_stops_writing_before_a_takeover_is_possible(tmp_path):
    """Renewal errors are blips only while the lease is valid on the holder's own clock: once
    its last successful renewal was sent longer ago than the TTL less the margin, the watchdog
    calls on_lost and every guarded write refuses, before any waiter's TTL can have run out."""
    store = LocalStore(tmp_path)
    lost = []
    holder = lease.Lease(store, KEY, 1.0, "resnet34 fold 0", on_lost=lost.append, me=elsewhere(1),
                         fence=(store, POINTER))
    holder.acquire()
    acquired = time.monotonic()
    real = store.write_bytes_if

    def unreachable(key, data, **kw):  # the lease's renewals fail from now on (the fence object's writes still work)
        if key == KEY:
            raise lease.StorageError("cannot reach S3 endpoint (retries exhausted)")
        return real(key, data, **kw)

    store.write_bytes_if = unreachable
    holder.check()  # still valid
    deadline = time.monotonic() + 10
    while not lost and time.monotonic() < deadline:
        time.sleep(0.02)
    stopped = time.monotonic() - acquired
    assert lost and "could not renew its lease" in lost[0]
    assert lease.Fenced.exit_code == EXIT_LEASED  # what the default on_lost exits with, too
    assert stopped < 1.0  # before a waiter, whose TTL starts no earlier than the last renewal, may take over
    with pytest.raises(lease.Fenced):
        holder.check()
    with pytest.raises(lease.Fenced):
        holder.write_fenced(store, POINTER, {"key": "resnet34/checkpoint-epoch0009.pt"})
    assert "key" not in json.loads(store.read(POINTER))  # nothing written once stopped
    holder.release()


def test_the_store_rejects_a_stale_holders_pointer_and_result_after_a_takeover(store):
    """Fencing by generation, enforced by the store's compare-and-swap: a holder that (by its
    frozen clock) still believes it holds the lease cannot write the pointer or result.json once
    a successor claimed the pointer."""
    frozen = lambda: 0.0  # noqa: E731 - the stale holder never notices the time passing
    lost = []
    stale = lease.Lease(store, KEY, 1.0, "resnet34 fold 0", on_lost=lost.append, clock=frozen, me=elsewhere(1),
                        fence=(store, POINTER))
    stale.acquire()
    stale.write_fenced(store, POINTER, {"key": "resnet34/checkpoint-epoch0001.pt", "epoch": 1})
    stale._stop.set()  # stalled: no more renewals
    stale._thread.join()
    successor = lease.Lease(store, KEY, 1.0, "resnet34 fold 0", on_lost=lost.append, me=elsewhere(2),
                            fence=(store, POINTER))
    successor.acquire()
    try:
        assert (stale.generation, successor.generation) == (1, 2)
        assert json.loads(store.read(POINTER)) == {"key": "resnet34/checkpoint-epoch0001.pt", "epoch": 1,
                                                   "lease_generation": 2}  # claimed: same pointer, new generation
        with pytest.raises(lease.Fenced, match="belongs to generation 2 of its lease, not this process's \\(1\\)"):
            stale.write_fenced(store, POINTER, {"key": "resnet34/checkpoint-epoch0002.pt", "epoch": 2})
        stale.lost = None  # even a holder that ignored that: its result needs a fenced pointer write first
        with pytest.raises(lease.Fenced):
            stale.write_once_fenced(store, "folds/0/resnet34/result.json", {"finished": "now"})
        assert not store.exists("folds/0/resnet34/result.json")
        successor.write_fenced(store, POINTER, {"key": "resnet34/checkpoint-epoch0003.pt", "epoch": 3})
        successor.write_once_fenced(store, "folds/0/resnet34/result.json", {"finished": "now"})
        assert json.loads(store.read(POINTER))["key"] == "resnet34/checkpoint-epoch0003.pt"
        assert json.loads(store.read("folds/0/resnet34/result.json"))["lease_generation"] == 2
    finally:
        successor.release()


def test_no_write_of_a_stalled_holder_lands_after_the_takeover(s3_env, bucket, tmp_path):
    """The issue's case through the fault proxy: the holder's lease PUTs are held back (TTL 3 s)
    while it keeps checkpointing (checkpoint._publish: data object, pointer, old data deleted);
    another process takes the lease over. Every write of the old holder that the store accepted
    was answered before the takeover was sent; its held-back renewal, released later, is
    refused by the store (412)."""
    import threading

    from gistnet.training import checkpoint
    from tests.faultproxy import FaultProxy

    hold_lease = threading.Event()
    released = threading.Event()
    answered = []  # (time answered, method, path, status) of every request the old holder made

    def before(method, path):
        if method == "PUT" and path.split("?")[0].endswith("/lease.json") and hold_lease.is_set():
            released.wait(20)

    def after(method, path, status):
        answered.append((time.monotonic(), method, path.split("?")[0], status))

    ttl = 3.0
    with FaultProxy(s3_env["AWS_ENDPOINT_URL"], pattern="ok", before=before, after=after) as proxy:
        via_proxy = open_store(f"s3://{bucket}/run", StorageConfig(endpoint_url=proxy.url, max_attempts=1,
                                                                   read_timeout=30))
        direct = open_store(f"s3://{bucket}/run", StorageConfig())
        unit = via_proxy.child("folds/0")
        lost, errors = [], []
        old = lease.Lease(via_proxy, KEY, ttl, "resnet34 fold 0", on_lost=lost.append, me=elsewhere(1),
                          fence=(unit, "resnet34/checkpoint.json"))
        old.acquire()

        def keep_checkpointing():
            epoch = 0
            while True:
                epoch += 1
                try:
                    checkpoint._publish(unit, "resnet34", epoch, memoryview(b"weights %d" % epoch), str(tmp_path), old)
                except lease.Fenced as exc:
                    errors.append(exc)
                    return
                time.sleep(0.05)

        writer = threading.Thread(target=keep_checkpointing, daemon=True)
        writer.start()
        time.sleep(1.5)
        hold_lease.set()
        new = lease.Lease(direct, KEY, ttl, "resnet34 fold 0", on_lost=lost.append, me=elsewhere(2),
                          fence=(direct.child("folds/0"), "resnet34/checkpoint.json"))
        new.acquire()
        takeover = new.renewed_at  # when the takeover's compare-and-swap was sent
        try:
            writer.join(30)
            released.set()
            time.sleep(2)
            assert errors and lost, "the old holder never stopped"
            writes = [a for a in answered if a[1] in ("PUT", "DELETE", "POST")]
            landed_after = [a for a in writes if 200 <= a[3] < 300 and a[0] >= takeover]
            assert landed_after == []
            assert any(a[0] < takeover and a[2].endswith("checkpoint.json") and a[3] == 200 for a in writes)
            assert any(a[2].endswith("/lease.json") and a[3] == 412 for a in writes)  # the held renewal, refused
            assert json.loads(direct.read(KEY))["host"] == "pod-2"
            assert json.loads(direct.read("folds/0/resnet34/checkpoint.json"))["lease_generation"] == new.generation
        finally:
            released.set()
            new.release()
