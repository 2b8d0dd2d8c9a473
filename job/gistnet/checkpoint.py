"""Resumable checkpoints and final weights in the run's store.

A checkpoint is complete only once its pointer (``<model>/checkpoint.json``) names it:
the data object is uploaded first, the pointer after, so a half-uploaded checkpoint is
never loaded. Loading uses ``torch.load(weights_only=True)`` and a sha256 check, so an
object in a bucket can never run code.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from gistnet.errors import StorageError
from gistnet.storage import Store, sha256_file
from gistnet.train import TrainState

log = logging.getLogger(__name__)


def pointer_key(model_name: str) -> str:
    return f"{model_name}/checkpoint.json"


def save_checkpoint(store: Store, model_name: str, state: TrainState, scratch: str) -> dict:
    key = f"{model_name}/checkpoint-epoch{state.epoch:04d}.pt"
    previous = read_pointer(store, model_name)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        path = Path(tmp) / "checkpoint.pt"
        torch.save(state.state_dict(), path)
        digest = sha256_file(path)
        store.upload_file(key, path, sha256=digest)
        pointer = {"key": key, "epoch": state.epoch, "sha256": digest, "bytes": os.path.getsize(path)}
    store.write_bytes(pointer_key(model_name), json.dumps(pointer).encode())
    if previous and previous["key"] != key:
        store.delete(previous["key"])
    log.info("%s: checkpoint at epoch %d -> %s", model_name, state.epoch, store.uri_of(key))
    return pointer


def read_pointer(store: Store, model_name: str) -> dict | None:
    try:
        return json.loads(store.read(pointer_key(model_name)))
    except FileNotFoundError:
        return None
    except ValueError:
        raise StorageError(f"{store.uri_of(pointer_key(model_name))}: corrupt checkpoint pointer") from None


def load_latest(store: Store, model_name: str, state: TrainState, scratch: str) -> bool:
    """Restore ``state`` from the newest complete checkpoint; False when there is none."""
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


def save_weights(store: Store, model_name: str, model: torch.nn.Module, scratch: str) -> dict:
    """Final weights as safetensors; returns uri, sha256 and size for the report."""
    key = f"{model_name}/model.safetensors"
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        path = Path(tmp) / "model.safetensors"
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        # One metadata key: safetensors writes a multi-key map in hash order, which would
        # make the file's sha256 differ between identical models.
        save_file(state, str(path), metadata={"gistnet": json.dumps({"architecture": model_name, "num_classes": 2})})
        digest = sha256_file(path)
        store.upload_file(key, path, sha256=digest)
        return {"uri": store.uri_of(key), "sha256": digest, "bytes": os.path.getsize(path)}
