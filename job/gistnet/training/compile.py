"""A compiled training forward (``torch.compile``, CUDA graphs) and its cache in the store.

``train.compile``: ``off`` (eager), ``default`` (Inductor kernels) or ``reduce-overhead``
(Inductor plus CUDA graphs: at batch 32 the GPU otherwise waits on Python and kernel
launches); ``auto`` is ``reduce-overhead`` on CUDA, for that reason (no GPU figure exists
yet: benchmarks/README.md lists the measurement as not done), and ``off`` on CPU. Only the
training forward (and so its backward) is compiled, with static shapes (``dynamic=False``); evaluation runs eager on the same module, so its batches may
have any size and no graph is captured for them. State dicts keep their keys.

The warm-up is paid once per cluster rather than once per run: after the first epoch the
compile artifacts (``torch.compiler.save_cache_artifacts``) are written to
``<output>/compile-cache/<key>.bin``, the key made of the torch version, the GPU, the model
and the shapes; the next run with the same key loads them before compiling. A missing,
corrupt or mismatched cache only costs the warm-up again (a warning, never an error).

The artifacts are compiled code that Inductor unpickles: whoever can write that prefix could
run code in every later training job. So each blob carries an HMAC-SHA256 under a secret
key from the environment (``GISTNET_COMPILE_CACHE_KEY``; a Kubernetes Secret in the chart),
checked before a byte of it reaches torch: a blob with a missing or wrong MAC is ignored
with a warning and never deserialised, and without a key the cache is neither read nor
written. (The sha256 in the header only detects damage: whoever wrote the blob wrote it.)
``train.compile_cache: false`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch

from gistnet.data.storage import Store

log = logging.getLogger(__name__)

MODES = ("off", "default", "reduce-overhead")
SETTINGS = ("auto", *MODES)
CACHE_PREFIX = "compile-cache"
MAGIC = b"gistnet-compile-cache 2\n"  # version 1 blobs (no MAC) are refused like any unsigned blob
MAC_TAG = b"hmac-sha256 "
KEY_ENV = "GISTNET_COMPILE_CACHE_KEY"


def cache_secret(environ=os.environ) -> bytes | None:
    """The MAC key of the compile cache, from the environment; None (no cache) when unset."""
    value = environ.get(KEY_ENV, "")
    return value.encode() if value else None


def resolve_mode(setting: str, device: torch.device) -> str:
    """``auto`` -> CUDA graphs on a GPU (launch overhead bounds small batches; not yet measured
    on a GPU), eager on CPU (no CPU figure shows the compile warm-up paying for itself)."""
    if setting == "auto":
        return "reduce-overhead" if device.type == "cuda" else "off"
    return setting


def compiled_forward(model: torch.nn.Module, mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The training forward: ``model`` itself when ``mode`` is off, else its compiled twin
    (same parameters). With CUDA graphs each call starts a new step, so the previous
    step's outputs may be overwritten only after the caller has used them."""
    if mode == "off":
        return model
    compiled = torch.compile(model, mode=mode, dynamic=False)
    if mode != "reduce-overhead":
        return compiled

    def forward(x: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(x)

    return forward


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


@dataclass(frozen=True)
class CacheKey:
    """What a compiled graph depends on; a cache made for another key is never loaded."""

    torch_version: str
    device: str
    model: str
    mode: str
    batch_size: int
    input_shape: tuple[int, ...]  # C, H, W of the model input
    autocast: str

    @classmethod
    def of(cls, model: str, mode: str, batch_size: int, image_size: int, device: torch.device) -> "CacheKey":
        return cls(torch.__version__, device_name(device), model, mode, batch_size, (3, image_size, image_size),
                   "bfloat16" if device.type == "cuda" else "none")

    def as_dict(self) -> dict:
        return {"torch_version": self.torch_version, "device": self.device, "model": self.model, "mode": self.mode,
                "batch_size": self.batch_size, "input_shape": list(self.input_shape), "autocast": self.autocast}

    def object_key(self) -> str:
        digest = hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]
        return f"{CACHE_PREFIX}/{self.model}-{digest}.bin"


def _mac(secret: bytes, signed: bytes) -> bytes:
    return hmac.new(secret, signed, hashlib.sha256).hexdigest().encode()


def encode(key: CacheKey, artifacts: bytes, secret: bytes) -> bytes:
    """``MAGIC``, the MAC line, the header line, the artifacts; the MAC covers all but its own line."""
    header = {"key": key.as_dict(), "sha256": hashlib.sha256(artifacts).hexdigest(), "bytes": len(artifacts)}
    body = json.dumps(header, sort_keys=True).encode() + b"\n" + artifacts
    return MAGIC + MAC_TAG + _mac(secret, MAGIC + body) + b"\n" + body


def decode(key: CacheKey, blob: bytes, secret: bytes) -> bytes:
    """The artifacts in ``blob``; ValueError when its MAC under ``secret`` is missing or wrong
    (checked first, before anything in it is parsed), when it is not a cache for ``key``, or
    when it is damaged."""
    if not blob.startswith(MAGIC):
        raise ValueError("not a gistnet compile cache of this version (no MAC): not loaded")
    mac_line, sep, body = blob[len(MAGIC):].partition(b"\n")
    if not sep or not mac_line.startswith(MAC_TAG):
        raise ValueError("no MAC: not loaded")
    if not hmac.compare_digest(mac_line[len(MAC_TAG):], _mac(secret, MAGIC + body)):
        raise ValueError(f"wrong MAC (written without this {KEY_ENV}, or altered): not loaded")
    header_line, sep, artifacts = body.partition(b"\n")
    try:
        header = json.loads(header_line) if sep else None
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise ValueError("unreadable header")
    if header.get("key") != key.as_dict():
        raise ValueError(f"made for {header.get('key')}, not {key.as_dict()}")
    if header.get("bytes") != len(artifacts) or header.get("sha256") != hashlib.sha256(artifacts).hexdigest():
        raise ValueError("truncated or corrupt (size or sha256 differs from its header)")
    return artifacts


class CompileCache:
    """The compile artifacts of one (model, shapes, device, torch) key in a store."""

    def __init__(self, store: Store, key: CacheKey, secret: bytes):
        self.store, self.key, self.secret = store, key, secret
        self.loaded = False

    @property
    def uri(self) -> str:
        return self.store.uri_of(self.key.object_key())

    def load(self) -> bool:
        """Load the artifacts before the first compile; False (and a warning when one was
        there but unusable) when there is nothing to load."""
        try:
            blob = self.store.read(self.key.object_key())
        except FileNotFoundError:
            log.info("no compile cache at %s: this run pays the compile warm-up and writes one", self.uri)
            return False
        except Exception as exc:  # noqa: BLE001 - a cache never fails the run
            log.warning("ignoring the compile cache %s: cannot read it (%s)", self.uri, exc)
            return False
        try:
            artifacts = decode(self.key, blob, self.secret)  # the MAC is checked before torch sees a byte
            if torch.compiler.load_cache_artifacts(artifacts) is None:  # torch logs why
                raise ValueError("torch could not read the artifacts")
        except Exception as exc:  # noqa: BLE001 - a cache never fails the run
            log.warning("ignoring the compile cache %s: %s; compiling from scratch", self.uri,
                        str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
            return False
        self.loaded = True
        log.info("loaded the compile cache %s", self.uri)
        return True

    def save(self) -> bool:
        """Write this process's compile artifacts (after the first epoch, when none were loaded)."""
        try:
            saved = torch.compiler.save_cache_artifacts()
            if saved is None:
                return False
            self.store.write_bytes(self.key.object_key(), encode(self.key, saved[0], self.secret))
        except Exception as exc:  # noqa: BLE001 - a cache never fails the run
            log.warning("could not write the compile cache %s: %s", self.uri, exc)
            return False
        log.info("wrote the compile cache %s (%d bytes)", self.uri, len(saved[0]))
        return True


def fused_optimizer_kwargs(model: torch.nn.Module) -> dict:
    """``fused=True`` for AdamW/SGD when the parameters are on a GPU (one kernel per step
    instead of a loop over parameter tensors)."""
    return {"fused": True} if next(model.parameters()).is_cuda else {}


def attach(state, model_name: str, setting: str, batch_size: int, image_size: int, device: torch.device,
           cache_store: Store | None, environ=os.environ) -> Callable:
    """Give ``state`` (a ``train.TrainState``) its compiled forward, loading the cache first
    (only with a MAC key in ``GISTNET_COMPILE_CACHE_KEY``); returns the per-epoch callback
    that writes the cache after the first epoch when none was loaded."""
    mode = resolve_mode(setting, device)
    state.forward = compiled_forward(state.model, mode)
    if mode == "off" or cache_store is None:
        return lambda s: None
    secret = cache_secret(environ)
    if secret is None:
        log.info("compile cache off: %s is not set (without it a cache could not be authenticated)", KEY_ENV)
        return lambda s: None
    cache = CompileCache(cache_store, CacheKey.of(model_name, mode, batch_size, image_size, device), secret)
    cache.load()
    pending = [not cache.loaded]

    def after_epoch(_state) -> None:
        if pending[0]:
            pending[0] = False
            cache.save()

    return after_epoch
