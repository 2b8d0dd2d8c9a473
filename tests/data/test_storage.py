import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from gistnet.config import StorageConfig
from gistnet.errors import StorageError
from gistnet.data.storage import LocalStore, open_store, redact, safe_key, sha256_file
from tests.conftest import NO_GALLERY


def test_local_store_round_trip(tmp_path):
    store = LocalStore(tmp_path / "root")
    store.write_bytes("a/b.txt", b"hello")
    assert store.read("a/b.txt") == b"hello"
    assert store.list() == ["a/b.txt"]
    assert store.child("a").list() == ["b.txt"]
    assert store.exists("a/b.txt") and not store.exists("a/c.txt")
    with pytest.raises(FileNotFoundError):
        store.read("missing")
    store.delete("a/b.txt")
    assert store.list() == []


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/etc/passwd"])
def test_keys_cannot_escape_the_root(tmp_path, key):
    store = LocalStore(tmp_path / "root")
    with pytest.raises(StorageError, match="unsafe object key"):
        store.write_bytes(key, b"x")
    assert not (tmp_path / "escape").exists()


def test_upload_drawn_keeps_concurrent_drawings_of_one_key_apart(tmp_path):
    """Fan-out processes sharing a scratch folder draw files of the same name at once (CI saw
    one delete the other's figure before its upload). Both draw before either uploads here."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    both_drawn = threading.Barrier(2, timeout=30)

    def draw_and_upload(store: LocalStore, text: str) -> str:
        def draw(path):
            path.write_text(text)
            both_drawn.wait()
            return text
        return store.upload_drawn("fold-0/figure.png", draw, str(scratch))

    stores = [LocalStore(tmp_path / name) for name in ("a", "b")]
    with ThreadPoolExecutor(2) as pool:
        returned = list(pool.map(draw_and_upload, stores, ["drawn by a", "drawn by b"]))
    assert returned == ["drawn by a", "drawn by b"]
    assert [s.read("fold-0/figure.png") for s in stores] == [b"drawn by a", b"drawn by b"]
    assert list(scratch.iterdir()) == []


def test_safe_key_normalises():
    assert safe_key("./a//b/") == "a/b"


def test_redact_strips_userinfo():
    assert redact("http://user:secret@minio:9000/x") == "http://minio:9000/x"


def test_unsupported_scheme():
    with pytest.raises(StorageError, match="unsupported URI scheme"):
        open_store("gs://bucket/x", StorageConfig())


def test_unwritable_local_output(tmp_path):
    (tmp_path / "file").write_text("not a folder")  # fails for root too, unlike a chmod
    store = LocalStore(tmp_path / "file" / "run")
    with pytest.raises(StorageError, match="cannot write"):
        store.write_bytes("config.yaml", b"1")


def test_s3_round_trip_and_listing(bucket, s3_client, tmp_path):
    store = open_store(f"s3://{bucket}/prefix", StorageConfig())
    store.write_bytes("GIST/a.png", b"123")
    store.write_bytes("LM/b.png", b"4567")
    assert store.list() == ["GIST/a.png", "LM/b.png"]
    assert store.read_many(["GIST/a.png", "LM/b.png"], threads=4) == {"GIST/a.png": b"123", "LM/b.png": b"4567"}
    assert store.stats.bytes_downloaded == 7
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (6 * 1024 * 1024))
    store = open_store(f"s3://{bucket}/prefix", StorageConfig(multipart_threshold_mb=5))
    store.upload_file("big.bin", big, sha256=sha256_file(big))
    head = s3_client.head_object(Bucket=bucket, Key="prefix/big.bin")
    assert head["ContentLength"] == big.stat().st_size
    assert head["Metadata"]["sha256"] == sha256_file(big)
    assert "-" in head["ETag"]  # multipart upload
    assert store.exists("big.bin") and not store.exists("nope")
    with pytest.raises(FileNotFoundError):
        store.read("nope")


def test_missing_bucket_is_a_clear_error(s3_env):
    store = open_store("s3://no-such-bucket-gistnet/x", StorageConfig())
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-gistnet' does not exist"):
        store.list()


def test_unreachable_endpoint_is_a_storage_error(monkeypatch):
    from tests.conftest import free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    cfg = StorageConfig(endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=2, connect_timeout=1)
    with pytest.raises(StorageError, match="cannot reach S3 endpoint"):
        open_store("s3://b/x", cfg).list()


class ClosingServer:
    """A TCP endpoint on loopback that accepts each connection and closes it at once
    (a dying S3 endpoint), counting the connections: botocore's attempts."""

    def __init__(self):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def _connections_until_failure(max_attempts: int) -> int:
    server = ClosingServer()
    try:
        cfg = StorageConfig(endpoint_url=server.url, max_attempts=max_attempts, connect_timeout=1, read_timeout=1)
        with pytest.raises(StorageError, match="cannot reach S3 endpoint") as failure:
            open_store("s3://b/x", cfg).list()
    finally:
        server.close()
    assert failure.value.exit_code == 5
    return server.connections


def test_unreachable_endpoint_is_retried_by_botocore_then_a_storage_error(monkeypatch):
    """Each extra attempt of storage.max_attempts is one more connection to the endpoint
    (the HTTP layer adds one reconnect of its own, whatever the setting)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert _connections_until_failure(4) - _connections_until_failure(1) == 3


@pytest.mark.e2e
def test_s3_faults_are_retried_and_outputs_are_identical(bucket, s3_env, s3_client, cli):
    """503s, connection resets and delays from a proxy in front of the loopback S3 server:
    botocore's retries absorb them and the run's outputs equal those of a clean run."""
    from tests.faultproxy import FaultProxy

    from gistnet.data import synth

    endpoint = s3_env["AWS_ENDPOINT_URL"]
    synth.write_dataset(open_store(f"s3://{bucket}/data", StorageConfig()), 12, 12, 32, seed=0)  # here: no process
    args = ["train", "--data", f"s3://{bucket}/data", "--models", "resnet34", "--epochs", 1, "--image-size", 32,
            "--batch-size", 16, "--augmentation", "none"]
    clean = cli(*args, "--output", f"s3://{bucket}/clean", "--run-id", "r", env={**s3_env, **NO_GALLERY})
    assert clean.returncode == 0, clean.stderr
    with FaultProxy(endpoint) as proxy:
        env = {**s3_env, **NO_GALLERY, "AWS_ENDPOINT_URL": proxy.url, "GISTNET_STORAGE_MULTIPART_THRESHOLD_MB": "16"}
        faulty = cli(*args, "--output", f"s3://{bucket}/faulty", "--run-id", "r", env=env)
    print(f"fault proxy answered: {proxy.counts}")
    assert faulty.returncode == 0, faulty.stderr
    assert proxy.counts["503"] >= 5 and proxy.counts["reset"] >= 3 and proxy.counts["delay"] >= 3, proxy.counts
    get = lambda key: json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())  # noqa: E731
    a, b = get("clean/r/report.json"), get("faulty/r/report.json")
    ma, mb = a["models"]["resnet34"], b["models"]["resnet34"]
    assert ma["checkpoint"]["sha256"] == mb["checkpoint"]["sha256"]
    assert ma["metrics"] == mb["metrics"] and a["dataset"]["train"] == b["dataset"]["train"]
    stored = s3_client.get_object(Bucket=bucket, Key="faulty/r/resnet34/model.safetensors")["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == mb["checkpoint"]["sha256"]
    head = s3_client.head_object(Bucket=bucket, Key=mb["resumable_checkpoint"]["uri"].split(f"{bucket}/", 1)[1])
    assert "-" in head["ETag"]  # the checkpoint went up in parts, through the faults


@pytest.mark.e2e
def test_persistently_unreachable_endpoint_is_a_storage_exit(cli, s3_env, tmp_path):
    from gistnet.errors import EXIT_STORAGE
    from tests.conftest import free_port

    env = {**s3_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "GISTNET_STORAGE_MAX_ATTEMPTS": "3",
           "GISTNET_STORAGE_CONNECT_TIMEOUT": "1"}
    done = cli("train", "--data", "s3://b/data", "--output", tmp_path, env=env)
    assert done.returncode == EXIT_STORAGE, done.stderr
    assert "cannot reach S3 endpoint" in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------- conditional writes


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path):
    """A LocalStore, and an S3Store on the loopback SeaweedFS: conditional writes behave alike."""
    if request.param == "local":
        return LocalStore(tmp_path / "root")
    bucket = request.getfixturevalue("bucket")
    return open_store(f"s3://{bucket}/prefix", StorageConfig())


def test_conditional_writes_create_once_and_swap_only_the_version_read(any_store):
    from gistnet.errors import PreconditionFailed

    first = any_store.write_bytes_if("r/report.json", b"one", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        any_store.write_bytes_if("r/report.json", b"two", if_none_match=True)  # exists: never replaced
    assert any_store.read_with_etag("r/report.json") == (b"one", first)
    second = any_store.write_bytes_if("r/report.json", b"two", if_match=first)
    assert second != first and any_store.read_with_etag("r/report.json") == (b"two", second)
    with pytest.raises(PreconditionFailed):
        any_store.write_bytes_if("r/report.json", b"three", if_match=first)  # a stale tag loses
    with pytest.raises(PreconditionFailed):
        any_store.write_bytes_if("r/other.json", b"x", if_match=first)  # nothing there to match
    assert any_store.read("r/report.json") == b"two" and not any_store.exists("r/other.json")
    assert any_store.list() == ["r/report.json"]  # no lock or temporary files left behind
    with pytest.raises(FileNotFoundError):
        any_store.read_with_etag("r/missing.json")


def test_concurrent_compare_and_swap_has_exactly_one_winner(any_store):
    """Eight writers read the same version, then all swap at once: one wins, seven are told."""
    from gistnet.errors import PreconditionFailed

    tag = any_store.write_bytes_if("lease.json", b"v0", if_none_match=True)
    start = threading.Barrier(8, timeout=30)

    def swap(i: int) -> bool:
        start.wait()
        try:
            any_store.write_bytes_if("lease.json", f"v{i + 1}".encode(), if_match=tag)
            return True
        except PreconditionFailed:
            return False

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(swap, range(8)))
    assert won.count(True) == 1
    assert any_store.read("lease.json") == f"v{won.index(True) + 1}".encode()


def test_an_s3_error_names_the_object_by_its_full_key(monkeypatch):
    """A run's store is a prefix (s3://bucket/runs/<run-id>): its errors name the object with
    that prefix, the key a user can look up, not the key relative to the run."""
    from tests.conftest import free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    cfg = StorageConfig(endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1, connect_timeout=1)
    run = open_store("s3://b/runs", cfg).child("r1")
    with pytest.raises(StorageError, match=r"to write s3://b/runs/r1/resnet34/checkpoint\.json \(retries"):
        run.write_bytes("resnet34/checkpoint.json", b"{}")
    with pytest.raises(StorageError, match=r"to list s3://b/runs/r1 \(retries"):
        run.list()


def test_listing_and_file_transfers_are_logged_at_debug(tmp_path, caplog):
    store = LocalStore(tmp_path / "store")
    source = tmp_path / "weights.bin"
    source.write_bytes(b"x" * 2_000_000)
    with caplog.at_level("DEBUG", logger="gistnet.data.storage"):
        store.upload_file("m/weights.bin", source)
        store.download_file("m/weights.bin", tmp_path / "back.bin")
        store.list()
    lines = [r.getMessage() for r in caplog.records if r.levelname == "DEBUG"]
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"wrote {tmp_path / 'store'}/m/weights.bin (2.0 MB) in ")
    assert lines[1].startswith(f"read {tmp_path / 'store'}/m/weights.bin (2.0 MB) in ")
    assert lines[2] == f"listed 1 objects under {tmp_path / 'store'}"
