"""launcher.py: what gistnet launch does with SIGTERM/SIGINT (the e2e runs under torchrun are
in tests/training/test_distributed.py)."""

import signal
import subprocess
import sys
import time

import pytest

from gistnet.training import launcher

# A training process: SIGTERM -> exit 8, SIGINT -> exit 130 (what gistnet's CLI does), or one
# that ignores SIGTERM (stuck in an upload that never ends).
CHILD = ("import signal, sys, time\n"
         "signal.signal(signal.SIGTERM, {term})\n"
         "signal.signal(signal.SIGINT, lambda *a: sys.exit(130))\n"
         "print('ready', flush=True)\n"
         "time.sleep(60)\n")


def _child(term: str = "lambda *a: sys.exit(8)") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(term=term)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 8), (signal.SIGINT, 130)])
def test_the_signal_is_forwarded_to_every_training_process(signum, code):
    procs = [_child(), _child()]
    forwarder = launcher.SignalForwarder(30, workers=lambda: [p.pid for p in procs if p.poll() is None])
    with forwarder.installed():
        forwarder.handle(signum, None)
        assert [p.wait(timeout=30) for p in procs] == [code, code]
    assert forwarder.name == signal.Signals(signum).name


def test_processes_still_running_after_the_grace_period_are_killed():
    stuck = _child(term="signal.SIG_IGN")
    forwarder = launcher.SignalForwarder(0.5, workers=lambda: [stuck.pid] if stuck.poll() is None else [])
    started = time.monotonic()
    with forwarder.installed():
        forwarder.handle(signal.SIGTERM, None)
        assert stuck.wait(timeout=30) == -signal.SIGKILL
    assert time.monotonic() - started >= 0.5


def test_a_signal_before_any_training_process_runs_ends_the_launch_at_once():
    forwarder = launcher.SignalForwarder(30, workers=lambda: [])
    with pytest.raises(launcher.SignalledBeforeStart):
        forwarder.handle(signal.SIGINT, None)


def test_the_grace_period_comes_from_the_charts_variable():
    assert launcher.grace_seconds({"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "285"}) == 285
    assert launcher.grace_seconds({}) == 30
    assert launcher.grace_seconds({"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "x"}) == 30


def test_the_launchers_own_children_are_found():
    proc = _child()
    try:
        assert proc.pid in launcher.children()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.pid not in launcher.children()


def test_a_worker_that_sigterm_ended_while_starting_counts_as_interrupted():
    """A worker killed by SIGTERM's default action (143: still importing, before its handler
    and its first checkpoint) after the launcher forwarded SIGTERM stopped as asked: 8."""
    assert launcher.exit_code(128 + signal.SIGTERM, signal.SIGTERM) == 8
    assert launcher.exit_code(128 + signal.SIGTERM, None) == 143  # not forwarded: someone else killed it
    assert launcher.exit_code(1, signal.SIGTERM) == 1 and launcher.exit_code(130, signal.SIGINT) == 130


def _catches_sigterm(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        caught = next(line for line in f if line.startswith("SigCgt:")).split()[1]
    return bool(int(caught, 16) >> (signal.SIGTERM - 1) & 1)


@pytest.mark.e2e
def test_a_sigterm_while_the_worker_starts_exits_8_not_143(tiny_data, tmp_path):
    """``python -m gistnet train`` catches SIGTERM from its first line: one that arrives while
    it imports and reads its config (held here on a FIFO) stops the run before training with
    exit 8 and one line, not 143 (which the chart's podFailurePolicy counts as a failure)."""
    import os

    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "gistnet", "train", "--config", str(fifo), "--data", str(tiny_data),
                             "--output", str(tmp_path / "out"), "--run-id", "r", "--models", "resnet34",
                             "--epochs", "1", "--image-size", "32", "--augmentation", "none", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and not _catches_sigterm(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)  # still starting: the config is not even read yet
        while proc.poll() is None and time.monotonic() < deadline + 60:
            try:  # hand it its config once it opens the FIFO (O_NONBLOCK: fails until a reader is there)
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.05)
                continue
            os.write(fd, b"train:\n  batch_size: 8\n")
            os.close(fd)
            break
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 8, err[-2000:]
    assert "Traceback" not in err and "epoch 1/1" not in err
    assert err.strip().splitlines()[-1].startswith("gistnet: interrupted: stopped by SIGTERM")


def test_the_launcher_says_what_its_workers_do_after_sigint(caplog):
    """SIGTERM: the workers finish their epoch and checkpoint (8); SIGINT: they stop at once
    without a checkpoint (130). The launcher's one line says which, not "checkpoint" for both."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        procs = [_child()]
        forwarder = launcher.SignalForwarder(30, workers=lambda: [p.pid for p in procs if p.poll() is None])
        caplog.clear()
        with forwarder.installed():
            forwarder.handle(signum, None)
            procs[0].wait(timeout=30)
        said = caplog.records[0].getMessage()
        if signum == signal.SIGINT:
            assert "without a checkpoint and exit 130" in said and "checkpoint and exit 8" not in said
        else:
            assert "checkpoint and exit 8" in said
