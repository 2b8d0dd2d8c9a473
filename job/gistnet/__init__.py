"""gistnet: train and audit EUS image classifiers for GIST vs leiomyoma."""

import os as _os
import signal as _signal

__version__ = "0.1.0"

_early: list[int] = []


def hold_early_signals() -> None:
    """First thing ``python -m gistnet`` does: remember a SIGTERM that arrives while the job is
    still importing and parsing (seconds on a loaded node), instead of dying of it with 143,
    which the chart's podFailurePolicy counts as a failure. The training loop's handler acts on
    it (``early_signal``): the run stops before training and exits 8."""
    _signal.signal(_signal.SIGTERM, lambda signum, frame: _early.append(signum))


def early_signal() -> int | None:
    """The signal ``hold_early_signals`` caught, if any."""
    return _early[0] if _early else None


def release_early_signals() -> None:
    """For a command that does not train: SIGTERM's default action again, and a SIGTERM
    already received takes effect now."""
    if _signal.getsignal(_signal.SIGTERM) not in (_signal.SIG_DFL, _signal.SIG_IGN, None):
        _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
    if _early:
        _os.kill(_os.getpid(), _signal.SIGTERM)
