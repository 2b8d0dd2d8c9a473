"""What ``gistnet launch`` does when it, not a training process, is signalled.

In the chart's distributed modes ``gistnet launch`` (``torchrun`` in-process) is the pod's main
process, so Kubernetes' SIGTERM (``kubectl delete pod``, a node drain, a preemption) reaches
it and not the training processes. Left to ``torchrun``, its agent raises ``SignalException``
(the pod then exits 1 with a traceback, which the chart's podFailurePolicy counts as a
failure), and SIGKILLs the training processes a fixed time after forwarding the signal,
whatever their checkpoint upload still needs.

So the launcher handles SIGTERM and SIGINT itself (``torchrun`` is told to handle only SIGHUP
and SIGQUIT): it forwards the signal to every training process, which finish their epoch,
store the checkpoint and exit 8 (SIGINT: they stop at once, with no checkpoint, and exit
130); ``torchrun`` then reports their exit codes as
for any other ending, and ``gistnet launch`` exits with the first one. The training processes
get ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds (the chart sets it to its
``terminationGracePeriodSeconds`` less 15; ``torchrun``'s own default, 30, without it) before
the launcher SIGKILLs those still running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Callable, Iterator, Mapping

log = logging.getLogger(__name__)

HANDLED = (signal.SIGTERM, signal.SIGINT)
# torchrun keeps handling these (its default list less the two handled here).
TORCHRUN_SIGNALS = "SIGHUP,SIGQUIT"
GRACE_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
DEFAULT_GRACE_S = 30.0


class SignalledBeforeStart(Exception):
    """The launcher was signalled before any training process ran: nothing to checkpoint."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def grace_seconds(environ: Mapping[str, str]) -> float:
    raw = environ.get(GRACE_ENV, "")
    try:
        return max(1.0, float(raw)) if raw else DEFAULT_GRACE_S
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %.0f", GRACE_ENV, raw, DEFAULT_GRACE_S)
        return DEFAULT_GRACE_S


def children(pid: int | None = None) -> list[int]:
    """The live child processes of ``pid`` (this process by default), from Linux's /proc."""
    pid = os.getpid() if pid is None else pid
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return [c for c in dict.fromkeys(found) if _alive(c)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited and only waits to be reaped


def exit_code(code: int, forwarded: int | None) -> int:
    """The launch's exit code from the first failed worker's ``code``: a worker that SIGTERM's
    default action ended (128 + 15: it was still starting, before its handler and its first
    checkpoint) was stopped as asked, with nothing to lose: 8, as a worker that checkpointed."""
    from gistnet.errors import EXIT_INTERRUPTED

    if forwarded == signal.SIGTERM and code == 128 + signal.SIGTERM:
        return EXIT_INTERRUPTED
    return code


def quiet_torchrun() -> None:
    """Once the launcher asked its workers to stop, torchrun's own lines about them ("Sending
    process ... closing signal", "failed (exitcode: 8)") only repeat it: rank 0's one line says
    how the run ended, and the launcher names any other failure itself."""
    names = [n for n in list(logging.root.manager.loggerDict) if n.startswith("torch.distributed.elastic")]
    for name in ["torch.distributed.elastic", *names]:
        logging.getLogger(name).disabled = True


class SignalForwarder:
    """Forwards SIGTERM/SIGINT to the training processes and bounds their shutdown."""

    def __init__(self, grace_s: float, workers: Callable[[], list[int]] = children):
        self.grace_s, self.workers = grace_s, workers
        self.signum: int | None = None
        self._timer: threading.Timer | None = None

    def handle(self, signum, frame) -> None:
        first = self.signum is None
        self.signum = signum
        workers = self.workers()
        if not workers:
            raise SignalledBeforeStart(signum)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        if first:
            what = ("which finish their epoch, checkpoint and exit 8" if signum == signal.SIGTERM else
                    "which stop at once without a checkpoint and exit 130 (a re-run resumes from the last one)")
            log.info("received %s: forwarded to the %d training processes, %s (SIGKILL after %.0fs)",
                     signal.Signals(signum).name, len(workers), what, self.grace_s)
            quiet_torchrun()
            self._timer = threading.Timer(self.grace_s, self._kill_the_rest)
            self._timer.daemon = True
            self._timer.start()

    def _kill_the_rest(self) -> None:
        left = self.workers()
        if left:
            log.error("%d training processes still running %.0fs after the signal: SIGKILL", len(left), self.grace_s)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def raise_if_signalled_while_starting(self) -> None:
        """A SIGTERM that came while ``gistnet launch`` was starting (``gistnet.hold_early_signals``)."""
        import gistnet

        if gistnet.early_signal() is not None:
            self.signum = gistnet.early_signal()
            raise SignalledBeforeStart(self.signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @contextlib.contextmanager
    def installed(self) -> Iterator["SignalForwarder"]:
        previous = {s: signal.signal(s, self.handle) for s in HANDLED}
        try:
            yield self
        finally:
            if self._timer is not None:
                self._timer.cancel()
            for s, handler in previous.items():
                signal.signal(s, handler)
