"""scripts/gpu-check.sh runs where there is a GPU (not in CI); here it is kept parseable and
shellcheck-clean. Its CPU dry run (DRY_RUN=1) is minutes long, so it is run by hand."""

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

SCRIPTS = [REPO / "scripts" / "gpu-check.sh", REPO / "scripts" / "fetch-gpu-wheels.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_gpu_scripts_parse_and_are_shellcheck_clean(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is not installed (CI installs scripts/system-packages.txt)")
        pytest.skip("shellcheck not installed (Debian package shellcheck; CI installs it)")
    proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_wheel_folder_is_ignored_by_git():
    assert "/.whl/" in (REPO / ".gitignore").read_text().splitlines()
