"""Object storage: local folders and S3-compatible buckets (AWS, MinIO, Ceph) behind one API.

The job reads its images through ``Store.read_many`` (parallel GETs over one shared boto3
client whose connection pool matches the thread count) and writes every output through
``Store.write_bytes``/``Store.upload_file``. Retries for throttling, 5xx and dropped
connections are botocore's own retry modes, configured in ``StorageConfig``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

from gistnet.config import StorageConfig, redact
from gistnet.errors import PreconditionFailed, StorageError
from gistnet.observe.transfers import TransferStats

log = logging.getLogger(__name__)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def is_safe_key(key: str) -> bool:
    """False for an absolute key or one with a ``..`` segment: it could escape a root."""
    return not key.startswith("/") and ".." not in key.replace("\\", "/").split("/")


def safe_key(key: str) -> str:
    """Normalise a relative key; reject absolute keys and ``..`` so a key never escapes a root."""
    if not is_safe_key(key):
        raise StorageError(f"refusing unsafe object key {key!r} (absolute or contains '..')")
    return "/".join(p for p in key.replace("\\", "/").split("/") if p not in ("", "."))


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Store:
    """A root (folder or bucket prefix) holding objects addressed by relative keys."""

    uri: str
    stats: TransferStats

    def list(self) -> list[str]:
        """Every object key below the root, relative to it, sorted."""
        raise NotImplementedError

    def read(self, key: str) -> bytes:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def write_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def read_with_etag(self, key: str) -> tuple[bytes, str]:
        """The object and its entity tag (the one ``write_bytes_if(if_match=...)`` compares);
        FileNotFoundError when there is none."""
        raise NotImplementedError

    def write_bytes_if(self, key: str, data: bytes, *, if_none_match: bool = False,
                       if_match: str | None = None) -> str:
        """Write ``key`` only if it does not exist (``if_none_match``) or only if its entity tag
        is still ``if_match``; return the new entity tag. ``PreconditionFailed`` when the
        condition does not hold (someone else wrote first): the caller re-reads and decides."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def upload_file(self, key: str, path: str | os.PathLike, sha256: str | None = None) -> None:
        raise NotImplementedError

    def download_file(self, key: str, path: str | os.PathLike) -> None:
        raise NotImplementedError

    def upload_drawn(self, key: str, draw: Callable[[Path], object], scratch: str):
        """Let ``draw(path)`` write a file in a private folder under ``scratch``, upload it as ``key``
        and return what ``draw`` returned. Private because fan-out processes sharing one scratch
        would otherwise overwrite or delete each other's file between drawing and uploading."""
        with tempfile.TemporaryDirectory(prefix="gistnet-", dir=scratch) as tmp:
            path = Path(tmp) / Path(key).name
            result = draw(path)
            self.upload_file(key, path)
        return result

    def child(self, sub: str) -> "Store":
        raise NotImplementedError

    def uri_of(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{safe_key(key)}"

    def read_many(
        self, keys: Iterable[str], threads: int, on_done: Callable[[int], None] | None = None
    ) -> dict[str, bytes | Exception]:
        """Read keys in parallel; a per-object failure is returned, not raised, so one bad
        object is reported instead of failing the whole download."""
        keys = list(keys)
        results: dict[str, bytes | Exception] = {}

        def fetch(key: str) -> tuple[str, bytes | Exception]:
            try:
                return key, self.read(key)
            except StorageError:
                raise
            except Exception as exc:  # noqa: BLE001 - reported per object
                return key, exc

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for n, (key, value) in enumerate(pool.map(fetch, keys), 1):
                results[key] = value
                if on_done:
                    on_done(n)
        return results


class LocalStore(Store):
    def __init__(self, root: str | os.PathLike, stats: TransferStats | None = None):
        self.root = Path(root)
        self.uri = str(self.root)
        self.stats = stats or TransferStats()

    def _path(self, key: str) -> Path:
        return self.root / safe_key(key)

    def list(self) -> list[str]:
        if not self.root.is_dir():
            log.debug("listed 0 objects under %s (no such folder)", self.uri)
            return []
        keys = sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        log.debug("listed %d objects under %s", len(keys), self.uri)
        return keys

    def read(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(str(path))
        data = path.read_bytes()
        self.stats.add(downloaded=len(data))
        return data

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _atomic_write(self, key: str, writer: Callable[[Path], None]) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
            os.close(fd)
            writer(Path(tmp))
            os.replace(tmp, target)  # readers never see a half-written file
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda p: p.write_bytes(data))
        self.stats.add(uploaded=len(data))

    def read_with_etag(self, key: str) -> tuple[bytes, str]:
        data = self.read(key)
        return data, local_etag(data)

    @contextlib.contextmanager
    def _folder_lock(self, target: Path):
        """An exclusive ``flock`` on the object's folder: conditional writers to one folder go
        one at a time (across processes on this host, and on file systems whose ``flock``
        spans hosts). Readers never need it: a write is an atomic rename."""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def write_bytes_if(self, key: str, data: bytes, *, if_none_match: bool = False,
                       if_match: str | None = None) -> str:
        if if_none_match == (if_match is not None):
            raise ValueError("write_bytes_if needs exactly one of if_none_match and if_match")
        target = self._path(key)
        try:
            with self._folder_lock(target):
                if if_match is not None:
                    current = local_etag(target.read_bytes()) if target.is_file() else None
                    if current != if_match:
                        raise PreconditionFailed(f"{target} changed since it was read (entity tag {current}, "
                                                 f"expected {if_match})")
                    self._atomic_write(key, lambda p: p.write_bytes(data))
                else:  # a hard link fails if the name exists, even for a writer that takes no lock
                    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
                    try:
                        with os.fdopen(fd, "wb") as f:
                            f.write(data)
                        os.link(tmp, target)
                    except FileExistsError:
                        raise PreconditionFailed(f"{target} exists already") from None
                    finally:
                        os.unlink(tmp)
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from None
        self.stats.add(uploaded=len(data))
        return local_etag(data)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def upload_file(self, key: str, path: str | os.PathLike, sha256: str | None = None) -> None:
        started = time.perf_counter()
        self._atomic_write(key, lambda p: shutil.copyfile(path, p))
        self.stats.add(uploaded=os.path.getsize(path))
        _moved("wrote", self.uri_of(key), os.path.getsize(path), started)

    def download_file(self, key: str, path: str | os.PathLike) -> None:
        started = time.perf_counter()
        try:
            shutil.copyfile(self._path(key), path)
        except OSError as exc:
            raise StorageError(f"cannot read {self._path(key)}: {exc.strerror or exc}") from None
        _moved("read", self.uri_of(key), os.path.getsize(path), started)

    def child(self, sub: str) -> "LocalStore":
        return LocalStore(self._path(sub), self.stats)


class S3Store(Store):
    def __init__(self, uri: str, config: StorageConfig, threads: int = 16, stats: TransferStats | None = None,
                 client=None):
        rest = uri[len("s3://"):]
        self.bucket, _, prefix = rest.partition("/")
        if not self.bucket:
            raise StorageError(f"{uri!r}: an S3 URI needs a bucket, like s3://bucket/prefix")
        self.prefix = safe_key(prefix)
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.config = config
        self.stats = stats or TransferStats()
        self.client = client or make_client(config, threads)
        self.endpoint = redact(self.client.meta.endpoint_url)

    def _key(self, key: str) -> str:
        key = safe_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, exc: Exception, action: str, key: str = "") -> StorageError:
        """The error naming the object by its full key (the store's prefix included)."""
        return StorageError(describe_s3_error(exc, self.bucket, action, self._key(key) if key else self.prefix,
                                              self.endpoint))

    def list(self) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = f"{self.prefix}/" if self.prefix else ""
        keys = []
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(o["Key"][len(prefix):] for o in page.get("Contents", []))
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, "list") from None
        keys = sorted(k for k in keys if k and not k.endswith("/"))
        log.debug("listed %d objects under %s", len(keys), self.uri)
        return keys

    def read(self, key: str) -> bytes:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except Exception as exc:  # noqa: BLE001
            if _error_code(exc) in ("NoSuchKey", "404"):
                raise FileNotFoundError(self.uri_of(key)) from None
            raise self._fail(exc, "read", key) from None
        self.stats.add(downloaded=len(body))
        return body

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except Exception as exc:  # noqa: BLE001
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._fail(exc, "read", key) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, "write", key) from None
        self.stats.add(uploaded=len(data))

    def read_with_etag(self, key: str) -> tuple[bytes, str]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            body = response["Body"].read()
        except Exception as exc:  # noqa: BLE001
            if _error_code(exc) in ("NoSuchKey", "404"):
                raise FileNotFoundError(self.uri_of(key)) from None
            raise self._fail(exc, "read", key) from None
        self.stats.add(downloaded=len(body))
        return body, response["ETag"]

    def write_bytes_if(self, key: str, data: bytes, *, if_none_match: bool = False,
                       if_match: str | None = None) -> str:
        """``PutObject`` with ``If-None-Match: *`` or ``If-Match: <etag>`` (AWS S3, MinIO and
        SeaweedFS enforce both; a store that ignored them would make this unconditional)."""
        if if_none_match == (if_match is not None):
            raise ValueError("write_bytes_if needs exactly one of if_none_match and if_match")
        condition = {"IfNoneMatch": "*"} if if_none_match else {"IfMatch": if_match}
        try:
            response = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
        except Exception as exc:  # noqa: BLE001
            # 412: the condition does not hold; 409 (AWS): a concurrent conditional write won
            if _error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise PreconditionFailed(f"{self.uri_of(key)} changed since it was read ({_error_code(exc)})") \
                    from None
            raise self._fail(exc, "write", key) from None
        self.stats.add(uploaded=len(data))
        return response["ETag"]

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, "delete", key) from None

    def upload_file(self, key: str, path: str | os.PathLike, sha256: str | None = None) -> None:
        from boto3.s3.transfer import TransferConfig

        threshold = self.config.multipart_threshold_mb * 1024 * 1024
        transfer = TransferConfig(multipart_threshold=threshold, multipart_chunksize=threshold)
        extra = {"Metadata": {"sha256": sha256}} if sha256 else None
        started = time.perf_counter()
        try:
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=transfer, ExtraArgs=extra)
            size = self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, "write", key) from None
        if size != os.path.getsize(path):
            raise StorageError(f"{self.uri_of(key)}: stored size {size} differs from local {os.path.getsize(path)}")
        self.stats.add(uploaded=size)
        _moved("uploaded", self.uri_of(key), size, started)

    def download_file(self, key: str, path: str | os.PathLike) -> None:
        started = time.perf_counter()
        try:
            self.client.download_file(self.bucket, self._key(key), str(path))
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, "read", key) from None
        self.stats.add(downloaded=os.path.getsize(path))
        _moved("downloaded", self.uri_of(key), os.path.getsize(path), started)

    def child(self, sub: str) -> "S3Store":
        return S3Store(f"s3://{self.bucket}/{self._key(sub)}", self.config, stats=self.stats, client=self.client)


def _moved(verb: str, uri: str, size: int, started: float) -> None:
    """The debug line of one file transfer (checkpoints, weights, figures: run outputs, never a
    data set's keys, which pseudonymised runs must not log)."""
    log.debug("%s %s (%.1f MB) in %.2fs", verb, uri, size / 1e6, time.perf_counter() - started)


def local_etag(data: bytes) -> str:
    """A local object's entity tag: the sha256 of its bytes (same bytes, same tag, as on S3)."""
    return hashlib.sha256(data).hexdigest()


def resolve_endpoint(config: StorageConfig) -> str | None:
    return config.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def make_client(config: StorageConfig, threads: int):
    import boto3
    from botocore.config import Config as BotoConfig

    endpoint = resolve_endpoint(config)
    boto_config = BotoConfig(
        retries={"mode": config.retry_mode, "max_attempts": config.max_attempts},
        max_pool_connections=max(1, threads),  # one connection per download thread
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        # MinIO and Ceph behind a plain host name need path-style addressing.
        s3={"addressing_style": "path" if endpoint else "auto"},
    )
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint, region_name=config.region or None, config=boto_config)


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def describe_s3_error(exc: Exception, bucket: str, action: str, key: str, endpoint: str) -> str:
    from botocore import exceptions as be

    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    code = _error_code(exc)
    if code in ("NoSuchBucket",):
        return f"bucket {bucket!r} does not exist at {endpoint}"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
        return f"credentials refused by {endpoint} for {where} ({code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    if code in ("AccessDenied", "403", "AllAccessDisabled"):
        return f"access denied to {action} {where} at {endpoint}"
    if isinstance(exc, be.NoCredentialsError):
        return f"no S3 credentials found to {action} {where}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
    if isinstance(exc, (be.EndpointConnectionError, be.ConnectTimeoutError, be.ConnectionClosedError,
                        be.ReadTimeoutError)):
        return f"cannot reach S3 endpoint {endpoint} to {action} {where} (retries exhausted)"
    detail = code or type(exc).__name__
    return f"cannot {action} {where} at {endpoint}: {redact(detail)}"


def open_store(uri: str, config: StorageConfig, threads: int = 16, stats: TransferStats | None = None) -> Store:
    if not uri:
        raise StorageError("no storage URI given")
    if is_s3(uri):
        return S3Store(uri, config, threads, stats)
    if "://" in uri and not uri.startswith("file://"):
        raise StorageError(f"unsupported URI scheme in {redact(uri)!r}: use a local path or s3://bucket/prefix")
    return LocalStore(uri.removeprefix("file://"), stats)


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(safe_key(p) for p in parts)])


__all__ = ["Store", "LocalStore", "S3Store", "open_store", "TransferStats", "sha256_file", "safe_key",
           "is_safe_key", "redact", "is_s3", "join_uri"]
