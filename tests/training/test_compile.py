import logging

import pytest
import torch

from gistnet.training import compile as compiling
from gistnet.training import train
from gistnet.config import TrainConfig, load_config
from gistnet.errors import ConfigError
from gistnet.data.storage import LocalStore


def tiny_data(n=16, size=32):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(n, 1, size, size, generator=g) * 255).to(torch.uint8)
    labels = torch.arange(n) % 2
    return train.TrainData(images, labels, images[:8], labels[:8])


def key(**changes) -> compiling.CacheKey:
    fields = {"model": "resnet34", "mode": "default", "batch_size": 8, "image_size": 32,
              "device": torch.device("cpu")} | changes
    return compiling.CacheKey.of(fields["model"], fields["mode"], fields["batch_size"], fields["image_size"],
                                 fields["device"])


def test_auto_is_cuda_graphs_on_a_gpu_and_eager_on_cpu():
    assert compiling.resolve_mode("auto", torch.device("cuda")) == "reduce-overhead"
    assert compiling.resolve_mode("auto", torch.device("cpu")) == "off"
    assert compiling.resolve_mode("default", torch.device("cpu")) == "default"
    assert load_config(None, {"train.compile": "reduce-overhead"}, environ={}).train.compile == "reduce-overhead"
    with pytest.raises(ConfigError, match="train.compile must be one of"):
        load_config(None, {"train.compile": "max-autotune"}, environ={})


SECRET = b"test-compile-cache-key"


@pytest.mark.e2e  # trains ResNet-34 (the slowest unit tests: make test-fast under 3 min)
def test_compiled_step_gives_the_losses_of_eager_and_writes_then_loads_its_cache(tmp_path):
    """Two epochs of one step each (8 images, batch 8), eager and compiled (Inductor on CPU,
    mode default), from the same seeded weights. What a compiled step must match is checked
    where it is well-defined: the first loss (same weights, same batch) to 1e-4, the first
    update (the backward) to 1e-2 of its norm, and the second loss, one step on, to 1e-2.
    Not later epochs: this ResNet trained from scratch on noise at lr 0.01 amplifies float32
    rounding about 100x per step (measured, eager vs compiled: 2e-6, 2e-4, then 8e-2 relative
    loss difference at steps 1, 2, 3), so a third step compares rounding, not the compiled step.
    The Inductor compile makes this the slowest test of this file (about a minute of CPU)."""
    cfg = TrainConfig(epochs=2, batch_size=8, checkpoint_every=0, optimizer="sgd", learning_rate=0.01)
    store = LocalStore(tmp_path / "out")
    def flat(model):
        return torch.cat([p.detach().flatten().clone() for p in model.parameters()])

    losses, before, after_first = [], [], []
    for mode in ("off", "default"):
        state = train.new_state("resnet34", cfg, torch.device("cpu"), None)
        before.append(flat(state.model))
        write_cache = compiling.attach(state, "resnet34", mode, 8, 32, torch.device("cpu"), store,
                                       environ={compiling.KEY_ENV: SECRET.decode()})
        snapshots = []

        def after_epoch(s, write_cache=write_cache, snapshots=snapshots):
            snapshots.append(flat(s.model))
            write_cache(s)

        train.fit("resnet34", state, tiny_data(8), cfg, train.Preprocess(torch.device("cpu")), None,
                  train.NullObserver(), train.StopFlag(), lambda s: None, after_epoch=after_epoch)
        losses.append([r["train_loss"] for r in state.history])
        after_first.append(snapshots[0])
    eager, compiled = losses
    assert torch.equal(before[0], before[1])  # the same seeded start
    assert compiled[0] == pytest.approx(eager[0], rel=1e-4)  # the forward
    update_eager, update_compiled = after_first[0] - before[0], after_first[1] - before[1]
    assert update_eager.norm() > 0 and (update_compiled - update_eager).norm() < 1e-2 * update_eager.norm()
    assert compiled[1] == pytest.approx(eager[1], rel=1e-2)  # the compiled forward reads the updated weights
    assert compiled[1] != compiled[0]
    blob = store.read(key().object_key())  # written after the first epoch
    assert compiling.decode(key(), blob, SECRET)
    cache = compiling.CompileCache(store, key(), SECRET)
    assert cache.load() and cache.loaded  # a later run loads it


def test_cache_blob_round_trip_and_mismatch():
    blob = compiling.encode(key(), b"artifacts", SECRET)
    assert compiling.decode(key(), blob, SECRET) == b"artifacts"
    with pytest.raises(ValueError, match="made for"):
        compiling.decode(key(batch_size=32), blob, SECRET)
    with pytest.raises(ValueError, match="wrong MAC"):
        compiling.decode(key(), blob[:-2], SECRET)  # any change to the signed bytes
    with pytest.raises(ValueError, match="wrong MAC"):
        compiling.decode(key(), blob, b"another key")
    assert key().object_key() != key(model="resnet50").object_key() != key(image_size=224).object_key()


@pytest.mark.parametrize("blob", [b"garbage", compiling.MAGIC + b"{not json\n", None])
def test_corrupt_or_mismatched_cache_is_ignored_with_a_warning(tmp_path, caplog, blob):
    store = LocalStore(tmp_path)
    if blob is None:  # a valid header for another key
        blob = compiling.encode(key(model="resnet50"), b"x", SECRET)
        store.write_bytes(key().object_key(), blob)
    else:
        store.write_bytes(key().object_key(), blob)
    cache = compiling.CompileCache(store, key(), SECRET)
    with caplog.at_level(logging.WARNING, logger="gistnet.training.compile"):
        assert cache.load() is False
    assert "ignoring the compile cache" in caplog.text and not cache.loaded


def test_corrupt_artifacts_with_a_valid_header_are_ignored(tmp_path, caplog):
    store = LocalStore(tmp_path)
    store.write_bytes(key().object_key(), compiling.encode(key(), b"\x80\x04not a pickle at all", SECRET))
    with caplog.at_level(logging.WARNING, logger="gistnet.training.compile"):
        assert compiling.CompileCache(store, key(), SECRET).load() is False
    assert "ignoring the compile cache" in caplog.text


def test_missing_cache_is_not_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="gistnet.training.compile"):
        assert compiling.CompileCache(LocalStore(tmp_path), key(), SECRET).load() is False
    assert caplog.text == ""


class WritesMarker:
    """Unpickling this writes a file: what a planted compile-cache entry could do in a pod."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('pwned')",))


def sha256_only_blob(k: compiling.CacheKey, artifacts: bytes, magic: bytes) -> bytes:
    """A blob as an attacker who can write the bucket makes it: a self-consistent sha256
    header (what version 1 checked), no MAC or a made-up one."""
    import hashlib
    import json

    header = {"key": k.as_dict(), "sha256": hashlib.sha256(artifacts).hexdigest(), "bytes": len(artifacts)}
    return magic + json.dumps(header, sort_keys=True).encode() + b"\n" + artifacts


@pytest.mark.parametrize("secret", [None, "the-pods-key"])
@pytest.mark.parametrize("planted", ["version 1, sha256 only", "no MAC line", "MAC under another key"])
def test_a_planted_cache_blob_is_never_deserialised(tmp_path, monkeypatch, caplog, secret, planted):
    """Someone with write access to <output>/compile-cache/ plants a blob whose payload writes
    a marker file when unpickled. torch's loader is replaced by ``pickle.loads`` (what Inductor
    does with a cache entry when a compile looks it up), so reaching it runs the payload: the
    last assertion shows that a correctly signed blob does. With no key the cache is not read;
    with a key the forged blob is ignored with a warning before torch sees it."""
    import pickle

    marker = tmp_path / "marker"
    payload = pickle.dumps(WritesMarker(marker))
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda data: pickle.loads(data))
    store = LocalStore(tmp_path / "out")
    k = key()
    if planted == "version 1, sha256 only":
        blob = sha256_only_blob(k, payload, b"gistnet-compile-cache 1\n")
    elif planted == "no MAC line":
        blob = sha256_only_blob(k, payload, compiling.MAGIC)
    else:
        blob = compiling.encode(k, payload, b"the attacker's guess")
    store.write_bytes(k.object_key(), blob)
    environ = {compiling.KEY_ENV: secret} if secret else {}
    state = train.new_state("resnet34", TrainConfig(epochs=1, batch_size=8), torch.device("cpu"), None)
    monkeypatch.setattr(compiling, "compiled_forward", lambda model, mode: model)  # no Inductor compile needed here
    with caplog.at_level(logging.INFO, logger="gistnet.training.compile"):
        after_epoch = compiling.attach(state, "resnet34", "default", 8, 32, torch.device("cpu"), store, environ)
        after_epoch(state)
    assert not marker.exists()
    if not secret:
        assert store.read(k.object_key()) == blob  # nor written
        assert f"compile cache off: {compiling.KEY_ENV} is not set" in caplog.text
    else:
        assert "ignoring the compile cache" in caplog.text and "MAC" in caplog.text
        assert secret not in caplog.text  # the key is never logged
    # the control: the same payload signed with the pod's key does reach the loader, and runs
    store.write_bytes(k.object_key(), compiling.encode(k, payload, b"the-pods-key"))
    compiling.CompileCache(store, k, b"the-pods-key").load()
    assert marker.read_text() == "pwned"
