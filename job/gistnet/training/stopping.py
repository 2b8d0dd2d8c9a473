"""Stopping on SIGTERM: the flag the training loop checks between epochs, and the stop
itself, which no rank leaves before rank 0's checkpoint is stored."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

import torch

from gistnet.errors import Interrupted, StorageError
from gistnet.training import distributed

log = logging.getLogger(__name__)


class StopFlag:
    """Set by SIGTERM; the loop checks it between epochs, checkpoints and exits."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name = ""

    def set(self, signal_name: str = "SIGTERM") -> None:
        self.signal_name = signal_name
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    @contextlib.contextmanager
    def installed(self):
        """Handle SIGTERM (what Kubernetes sends before eviction) for the duration."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum, frame):
            # INFO: what follows is the one line that says how it ended (``gistnet: interrupted: ...``)
            log.info("received %s: finishing the current epoch, then checkpointing", signal.Signals(signum).name)
            self.set(signal.Signals(signum).name)

        previous = signal.signal(signal.SIGTERM, handler)
        import gistnet

        if gistnet.early_signal() is not None:  # came while the process was starting (``python -m gistnet``)
            log.warning("received %s while starting: stopping before training",
                        signal.Signals(gistnet.early_signal()).name)
            self.set(signal.Signals(gistnet.early_signal()).name)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)


def stop_with_checkpoint(name: str, state, epochs: int, save_checkpoint, stop: StopFlag,
                         world: distributed.World, device: torch.device) -> None:
    """Every rank agreed to stop after this epoch. Rank 0 stores the checkpoint durably (uploaded
    and its pointer written: ``save_checkpoint(state, durable=True)``; the other ranks' callback
    writes nothing); then one collective, which every rank waits in, tells them all whether
    it is stored. Only then does any rank exit: a rank that exits first makes torchrun stop
    the others, rank 0's upload with them. "checkpoint saved" is said only once it is."""
    failure: Exception | None = None
    try:
        save_checkpoint(state, durable=True)
    except Exception as exc:  # noqa: BLE001 - raised below, after the other ranks learned of it
        failure = exc
    failed = distributed.any_rank(failure is not None, world, device)
    if failure is not None:
        raise failure
    if failed:
        raise StorageError(f"{name}: stopped by {stop.signal_name} after epoch {state.epoch}/{epochs}, but rank 0 "
                           "could not store the checkpoint (its error is in rank 0's log)")
    raise Interrupted(f"{name}: stopped by {stop.signal_name} after epoch {state.epoch}/{epochs}; checkpoint saved")
