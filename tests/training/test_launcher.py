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
