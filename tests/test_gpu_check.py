"""scripts/gpu-check.sh runs where there is a GPU (not in CI); its CPU dry run (DRY_RUN=1: the
same steps at tiny sizes on the CPU) runs here, so the script works the first time a GPU is
lent. Both GPU scripts are parsed and shellcheck-checked with every other shell script in
tests/test_scripts.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import NO_GALLERY, REPO


def test_wheel_folder_is_ignored_by_git():
    assert "/.whl/" in (REPO / ".gitignore").read_text().splitlines()


@pytest.mark.e2e
def test_gpu_check_dry_run_passes_every_step(tmp_path):
    # DRY_COMPILE=off: the "compiled" jobs run eager (inductor compiling for the CPU took 13 min per
    # job on the shared 2-core machine); the compiled step and its cache are tests/training/test_compile.py's.
    # NO_GALLERY: the steps are checked, not the figures (the GPU run draws them)
    env = {**os.environ, **NO_GALLERY, "DRY_RUN": "1", "DRY_COMPILE": "off", "TMPDIR": str(tmp_path),
           "LOG_DIR": str(tmp_path / "logs"),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    env.pop("OUT", None)
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh")], capture_output=True, text=True,
                          env=env, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    by_name = {line["name"]: line for line in lines}
    logs = {p.name: p.read_text()[-1500:] for p in (tmp_path / "logs").glob("*.log")}
    failed = [line for line in lines if line.get("ok") is False]
    assert not failed, (failed, logs)
    for step in ("environment", "demo", "synth", "paper-job-compiled-cold-cache", "paper-job-compiled-warm-cache",
                 "paper-job-eager", "resume-second", "kill-and-resume", "finished"):
        assert step in by_name, (step, sorted(by_name), logs)
    for job in ("paper-job-compiled-cold-cache", "paper-job-compiled-warm-cache", "paper-job-eager"):
        assert by_name[f"{job}/resnet34"]["epochs"] == 1
    assert {"model-only", "gistnet-step", "torchvision-reference", "ratios"} <= set(by_name)
    resume = by_name["kill-and-resume"]
    assert resume["first_exit_code"] == resume["expected_first_exit_code"] == 8, logs
    assert resume["resumed_from_epoch"] >= 1
