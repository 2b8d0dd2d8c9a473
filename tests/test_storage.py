import pytest

from gistnet.config import StorageConfig
from gistnet.errors import StorageError
from gistnet.storage import LocalStore, open_store, redact, safe_key, sha256_file


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
