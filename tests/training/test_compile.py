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


def test_compiled_step_gives_the_losses_of_eager_and_writes_then_loads_its_cache(tmp_path):
    """Two epochs of two steps, eager and compiled (Inductor on CPU, mode default). The
    training losses are compared: validation after so few steps runs a BatchNorm whose
    running statistics are barely warm, where rounding noise is amplified. The Inductor
    compile makes this the slowest test of this file (about a minute of CPU)."""
    cfg = TrainConfig(epochs=2, batch_size=8, checkpoint_every=0, optimizer="sgd", learning_rate=0.01)
    store = LocalStore(tmp_path / "out")
    losses = []
    for mode in ("off", "default"):
        state = train.new_state("resnet34", cfg, torch.device("cpu"), None)
        after_epoch = compiling.attach(state, "resnet34", mode, 8, 32, torch.device("cpu"), store)
        train.fit("resnet34", state, tiny_data(), cfg, train.Preprocess(torch.device("cpu")), None,
                  train.NullObserver(), train.StopFlag(), lambda s: None, after_epoch=after_epoch)
        losses.append([r["train_loss"] for r in state.history])
    eager, compiled = losses
    # Within bf16's precision (2^-8 relative): the first epoch agrees to ~1e-4, the second
    # carries the first's rounding differences through two updates of a net trained from scratch.
    assert compiled == pytest.approx(eager, rel=1e-2)
    assert compiled[1] != compiled[0]  # the compiled step updates the weights it reads
    blob = store.read(key().object_key())  # written after the first epoch
    assert compiling.decode(key(), blob)
    cache = compiling.CompileCache(store, key())
    assert cache.load() and cache.loaded  # a later run loads it


def test_cache_blob_round_trip_and_mismatch():
    blob = compiling.encode(key(), b"artifacts")
    assert compiling.decode(key(), blob) == b"artifacts"
    with pytest.raises(ValueError, match="made for"):
        compiling.decode(key(batch_size=32), blob)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        compiling.decode(key(), blob[:-2])
    assert key().object_key() != key(model="resnet50").object_key() != key(image_size=224).object_key()


@pytest.mark.parametrize("blob", [b"garbage", compiling.MAGIC + b"{not json\n", None])
def test_corrupt_or_mismatched_cache_is_ignored_with_a_warning(tmp_path, caplog, blob):
    store = LocalStore(tmp_path)
    if blob is None:  # a valid header for another key
        blob = compiling.encode(key(model="resnet50"), b"x")
        store.write_bytes(key().object_key(), blob)
    else:
        store.write_bytes(key().object_key(), blob)
    cache = compiling.CompileCache(store, key())
    with caplog.at_level(logging.WARNING, logger="gistnet.training.compile"):
        assert cache.load() is False
    assert "ignoring the compile cache" in caplog.text and not cache.loaded


def test_corrupt_artifacts_with_a_valid_header_are_ignored(tmp_path, caplog):
    store = LocalStore(tmp_path)
    store.write_bytes(key().object_key(), compiling.encode(key(), b"\x80\x04not a pickle at all"))
    with caplog.at_level(logging.WARNING, logger="gistnet.training.compile"):
        assert compiling.CompileCache(store, key()).load() is False
    assert "ignoring the compile cache" in caplog.text


def test_missing_cache_is_not_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="gistnet.training.compile"):
        assert compiling.CompileCache(LocalStore(tmp_path), key()).load() is False
    assert caplog.text == ""
