"""Every script in benchmarks/ and scripts/ that a user runs, run at its smallest size.

The layout move left two benchmarks importing modules that no longer existed, and nothing
noticed: each one here runs as a user would start it (``python benchmarks/x.py ...`` from the
repository root, a fresh process) and must exit 0 and print what it measures. The sizes are
the smallest each script accepts, so each run is seconds of CPU; they train or start servers,
so they are end-to-end tests. Not run here, each for a stated reason:

- ``benchmarks/soak.py``: tests/training/test_soak.py runs it at its test size;
- ``scripts/render_k8s.py --check``: tests/test_k8s.py;
- ``scripts/gpu-check.sh`` (its CPU dry run): tests/test_gpu_check.py;
- ``scripts/build-image.sh``, ``debian-base.sh``, ``run-image-readonly.sh``, ``storage-driver.sh``,
  ``system-deps.sh``, ``get-k8s-tools.sh``, ``get-checkov.sh``: ``make test`` and ``make
  image-test`` run them (tests/test_image.py reads what they built);
- ``scripts/fetch-gpu-wheels.sh`` and ``scripts/bake_imagenet_weights.py`` download from PyPI
  and from download.pytorch.org, which the suite cannot reach; every shell script is at least
  parsed and shellcheck-clean (below).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import NO_GALLERY, REPO

SHELL_SCRIPTS = sorted((REPO / "scripts").glob("*.sh"))


def run_script(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python <script> args...`` from the repository root, as the docs show it."""
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "job"), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert done.returncode == 0, f"{args[0]} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse_and_are_shellcheck_clean(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is not installed (CI installs scripts/system-packages.txt)")
        pytest.skip("shellcheck not installed (Debian package shellcheck; CI installs it)")
    proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_every_benchmark_and_python_script_is_run_or_accounted_for():
    """A new script gets a smoke run here (or a named test elsewhere), not silence."""
    covered = {"bench_cuda_path.py", "bench_metrics.py", "bench_predict.py", "bench_load.py", "bench_ddp.py",
               "soak.py", "render_k8s.py", "bake_imagenet_weights.py"}
    found = {p.name for p in [*(REPO / "benchmarks").glob("*.py"), *(REPO / "scripts").glob("*.py")]}
    assert found == covered, f"new or removed scripts: {sorted(found ^ covered)}"


@pytest.mark.e2e
def test_bench_cuda_path_runs():
    out = run_script("benchmarks/bench_cuda_path.py", "--batch-size", "2", "--image-size", "32", "--repeat", "1").stdout
    assert "resnet34 checkpoint" in out and "MB: training thread blocks" in out
    assert "online_batch, 2 x 32 px on cpu" in out


@pytest.mark.e2e
def test_bench_metrics_runs():
    out = run_script("benchmarks/bench_metrics.py", "--image-size", "32", "--batch-size", "2", "--steps", "1",
                     "--calls", "10").stdout
    assert "on_step:" in out and "ResNet-34 training step (CPU, 32 px, batch 2)" in out
    assert "metrics per step / training step:" in out


@pytest.mark.e2e
def test_bench_predict_runs():
    out = run_script("benchmarks/bench_predict.py", "--threads", "1", "--images", "2", "--batch-size", "2",
                     "--size", "32", "--models", "resnet34").stdout
    for engine in ("torch", "onnxruntime"):
        assert f"resnet34 {engine}: " in out and "img per CPU-second" in out


@pytest.mark.e2e
def test_bench_load_runs_every_loader_on_both_sources():
    out = run_script("benchmarks/bench_load.py", "--images", "8", "--image-size", "32", "--threads", "2").stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {(r["source"], r["name"]) for r in rows} == {
        (source, f"load/{loader}") for source in ("local", "s3") for loader in ("gistnet", "streaming-reference", "lists")}
    assert all(r["images"] == 8 for r in rows)
    # interleaved rounds, gistnet with and without the fan mask, loaded to another size: one summary line
    out = run_script("benchmarks/bench_load.py", "--images", "8", "--image-size", "32", "--load-size", "24",
                     "--threads", "2", "--sources", "local", "--loaders", "gistnet,streaming-reference",
                     "--roi", "auto,none", "--repeat", "2").stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(r["round"], r["roi"]) for r in rows[:-1] if r["name"] == "load/gistnet"] == [
        (0, "auto"), (0, "none"), (1, "auto"), (1, "none")]
    assert all(r["shape"][-1] == 24 for r in rows[:-1])
    summary = {(s["name"], s["roi"]): s for s in rows[-1]["summary"]}
    assert set(summary) == {("load/gistnet", "auto"), ("load/gistnet", "none"), ("load/streaming-reference", "")}
    assert summary[("load/gistnet", "auto")]["rounds"] == 2 and summary[("load/gistnet", "auto")]["ratio_to_reference"] > 0


@pytest.mark.e2e
def test_bench_ddp_throughput_and_exit_loop_run():
    out = run_script("benchmarks/bench_ddp.py", "throughput", "--image-size", "32", "--epochs", "1",
                     "--n-gist", "20", "--n-lm", "20", env=NO_GALLERY).stdout  # 32 training images: one global batch
    for config in ("1 process(es) x 1 thread(s)", "1 process(es) x 2 thread(s)", "2 process(es) x 1 thread(s)"):
        assert f"{config}  whole command:" in out
    out = run_script("benchmarks/bench_ddp.py", "exit-loop", "--runs", "1", "--variant", "delete").stdout
    assert "delete: 0 of 1 runs did not exit 0" in out


def test_stage_times_are_printed_recorded_and_summed(tmp_path):
    """scripts/stage.sh, which `make test` and `make image-test` run each stage through. Stages can
    overlap (WITH_IMAGE=1 make test builds the image beside the suite): the summary gives their sum
    and the wall time from the first start to the last end."""
    env = {**os.environ, "STAGE_LOG": str(tmp_path / "times")}
    stage = ["bash", str(REPO / "scripts" / "stage.sh")]
    beside = subprocess.Popen([*stage, "image-build", "sleep", "2"], stdout=subprocess.PIPE, text=True, env=env)
    ok = subprocess.run([*stage, "unit", "sleep", "1"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and ok.stdout.splitlines()[-1] in ("== stage unit: 1 s (exit 0)",
                                                                 "== stage unit: 2 s (exit 0)")
    assert beside.wait(timeout=30) == 0
    failed = subprocess.run([*stage, "e2e", "bash", "-c", "echo out; exit 3"], capture_output=True, text=True, env=env)
    assert failed.returncode == 3 and failed.stdout.splitlines() == ["out", "== stage e2e: 0 s (exit 3)"]
    rows = [line.split("\t") for line in (tmp_path / "times").read_text().splitlines()]
    assert [(name, code) for name, _, code, _, _ in rows] == [("unit", "0"), ("image-build", "0"), ("e2e", "3")]
    assert all(int(end) - int(start) == int(seconds) for _, seconds, _, start, end in rows)
    summary = subprocess.run([*stage, "--summary"], capture_output=True, text=True, env=env).stdout.splitlines()
    total = sum(int(row[1]) for row in rows)
    wall = max(int(row[4]) for row in rows) - min(int(row[3]) for row in rows)
    assert wall < total  # the two overlapping stages count once in the wall time
    assert summary[0] == "== time per stage" and [line.split()[:3] for line in summary[-2:]] == [
        ["sum", str(total), "s"], ["wall", str(wall), "s"]]
    assert subprocess.run([*stage, "--reset"], env=env).returncode == 0 and not (tmp_path / "times").exists()


def test_make_test_times_each_stage_and_keeps_the_slowest_tests():
    makefile = (REPO / "Makefile").read_text()

    def recipe(target):
        return makefile.split(f"\n{target}:", 1)[1].split("\n\n", 1)[0]

    assert "--summary" in recipe("test") and "$(STAGE) installs " in recipe("test-installs")
    assert recipe("suite").startswith(" test-installs\n")  # the suite's prerequisite
    for stage in ("unit", "e2e"):
        assert f"$(STAGE) {stage} " in recipe("suite")
    assert "$(call parallel,$(E2E_WORKERS)) -m e2e" in recipe("suite")
    assert "$(STAGE) image-installs " in recipe("image-test") and "$(STAGE) image-installs " in recipe(
        "image-beside-build")
    for stage in ("image-base", "image-build"):
        assert f"$(STAGE) {stage} " in recipe("image-build-stages")
    assert "$(STAGE) image-run " in recipe("image-run-stage")
    # CI makes the image beside the suite: built from the start, run once the installs are done too
    assert "WITH_IMAGE=1 make test" in (REPO / ".ci" / "run").read_text()
    assert "image-beside-run" in recipe("test") and "image-beside-report" in recipe("test")
    assert recipe("image-beside-run").startswith(" image-beside-build test-installs\n")
    assert "--durations=25" in (REPO / "pyproject.toml").read_text()
