"""Resumable checkpoints and final weights in the run's store.

A checkpoint is complete only once its pointer (``<model>/checkpoint.json``) names it:
the data object is uploaded first, the pointer after, so a half-uploaded checkpoint is
never loaded. Under a unit's lease (``training/lease.py``) the pointer is the fence object:
written compare-and-swap, stamped with the lease's generation, so a holder whose lease was
taken over cannot replace it (``fence.write_fenced``); a stub the lease's claim left (no
``key``) is no checkpoint. Loading uses ``torch.load(weights_only=True)`` and a sha256 check, so an
object in a bucket can never run code.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import threading
from pathlib import Path

import torch
from safetensors.torch import save_file

from gistnet.errors import GistnetError, Interrupted, StorageError
from gistnet.data.storage import LocalStore, Store, sha256_file
from gistnet.training.train import TrainState

log = logging.getLogger(__name__)


def pointer_key(model_name: str) -> str:
    return f"{model_name}/checkpoint.json"


def save_checkpoint(store: Store, model_name: str, state: TrainState, scratch: str, fence=None) -> dict:
    """Save ``state`` now, on this thread; returns the pointer."""
    return _publish(store, model_name, state.epoch, serialize(state), scratch, fence)


def serialize(state: TrainState) -> memoryview:
    """The checkpoint's bytes: a consistent snapshot, copied off the device."""
    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)
    return buffer.getbuffer()


def _publish(store: Store, model_name: str, epoch: int, data: memoryview, scratch: str, fence=None) -> dict:
    """Hash and upload a serialized checkpoint, then point to it, then drop the previous one.
    With a ``fence`` (the unit's ``lease.Lease``) nothing is written once the lease is lost, and
    the pointer is written compare-and-swap under the lease's generation."""
    key = f"{model_name}/checkpoint-epoch{epoch:04d}.pt"
    previous = read_pointer(store, model_name)
    if fence is not None:
        fence.check()
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        path = Path(tmp) / "checkpoint.pt"
        path.write_bytes(data)
        digest = sha256_file(path)
        store.upload_file(key, path, sha256=digest)
        pointer = {"key": key, "epoch": epoch, "sha256": digest, "bytes": os.path.getsize(path)}
    if fence is None:
        store.write_bytes(pointer_key(model_name), json.dumps(pointer).encode())
    else:
        fence.write_fenced(store, pointer_key(model_name), pointer)
    if previous and previous["key"] != key and (fence is None or fence.valid()):
        store.delete(previous["key"])
    log.info("%s: checkpoint at epoch %d -> %s", model_name, epoch, store.uri_of(key))
    return pointer


class CheckpointWriter:
    """Saves one model's checkpoints during training.

    The state is serialized on the training thread (a consistent snapshot: the next step
    changes the weights). With a remote store the hash, upload and pointer then run in one
    background thread, so training does not wait for the network; a local store is written
    at once. At most one upload is in flight: the next ``save``, ``wait`` and the end of the
    ``with`` block wait for it, and an upload's error is raised there, on the training
    thread, as the ``StorageError`` a synchronous save would have raised.
    """

    def __init__(self, store: Store, model_name: str, scratch: str, background: bool | None = None, fence=None):
        self.store, self.model_name, self.scratch, self.fence = store, model_name, scratch, fence
        self.background = not isinstance(store, LocalStore) if background is None else background
        self.pointer: dict | None = None
        self._pending: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, state: TrainState, durable: bool = False) -> None:
        """Checkpoint ``state``; with ``durable`` (a stop) return only once it is stored and
        its pointer written."""
        self.wait()
        if not self.background or durable:
            self.pointer = save_checkpoint(self.store, self.model_name, state, self.scratch, self.fence)
            return
        data, epoch = serialize(state), state.epoch

        def upload() -> None:
            try:
                self.pointer = _publish(self.store, self.model_name, epoch, data, self.scratch, self.fence)
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread by wait()
                self._error = exc

        self._pending = threading.Thread(target=upload, name=f"checkpoint-{self.model_name}", daemon=True)
        self._pending.start()

    def wait(self) -> dict | None:
        """Wait for the upload in flight; raise its error; the newest pointer written."""
        if self._pending is not None:
            self._pending.join()
            self._pending = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self.pointer

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or issubclass(exc_type, Interrupted):
            self.wait()  # the run is only resumable once the checkpoint is stored
            return
        try:
            self.wait()
        except GistnetError as upload_error:  # the first error is the one to report
            log.warning("%s: the checkpoint upload in flight also failed: %s", self.model_name, upload_error)


def read_pointer(store: Store, model_name: str) -> dict | None:
    try:
        pointer = json.loads(store.read(pointer_key(model_name)))
    except FileNotFoundError:
        return None
    except ValueError:
        raise StorageError(f"{store.uri_of(pointer_key(model_name))}: corrupt checkpoint pointer") from None
    return pointer if isinstance(pointer, dict) and pointer.get("key") else None  # a lease's stub: none yet


READ = "read"  # load_latest's default: read the pointer now


def load_latest(store: Store, model_name: str, state: TrainState, scratch: str,
                pointer: dict | None | str = READ) -> bool:
    """Restore ``state`` from the newest complete checkpoint (or from ``pointer``, the one rank 0
    read under the unit's lease, None: there is none); False when there is none."""
    if pointer == READ:
        pointer = read_pointer(store, model_name)
    if pointer is None:
        return False
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        path = Path(tmp) / "checkpoint.pt"
        store.download_file(pointer["key"], path)
        if sha256_file(path) != pointer["sha256"]:
            raise StorageError(f"{store.uri_of(pointer['key'])}: sha256 does not match its pointer; refusing to resume")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"{store.uri_of(pointer['key'])}: not a loadable checkpoint "
                               f"({type(exc).__name__}); refusing to resume") from None
    state.load_state_dict(data)
    log.info("%s: resumed from %s (epoch %d)", model_name, store.uri_of(pointer["key"]), state.epoch)
    return True


def save_weights(store: Store, model_name: str, model: torch.nn.Module, scratch: str, num_classes: int = 2) -> dict:
    """Final weights as safetensors; returns uri, sha256 and size for the report."""
    key = f"{model_name}/model.safetensors"
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        path = Path(tmp) / "model.safetensors"
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        # One metadata key: safetensors writes a multi-key map in hash order, which would
        # make the file's sha256 differ between identical models.
        save_file(state, str(path), metadata={"gistnet": json.dumps({"architecture": model_name, "num_classes": num_classes})})
        digest = sha256_file(path)
        store.upload_file(key, path, sha256=digest)
        return {"uri": store.uri_of(key), "sha256": digest, "bytes": os.path.getsize(path)}
