import json

import pytest
import torch

from gistnet.training import checkpoint
from gistnet.training import train
from gistnet.config import TrainConfig
from gistnet.errors import ConfigError, StorageError
from gistnet.data.storage import LocalStore, sha256_file

CFG = TrainConfig(epochs=3, batch_size=4)


def state(epoch=0, provenance=None):
    s = train.new_state("resnet34", CFG, torch.device("cpu"), None)
    s.epoch = epoch
    s.history = [{"epoch": e + 1, "train_loss": 0.5} for e in range(epoch)]
    s.provenance = provenance or {"split": {"train": ["a"], "val": ["b"]}, "augmentation_seed": 0}
    return s


def test_save_then_resume_restores_everything(tmp_path):
    store = LocalStore(tmp_path / "run")
    saved = state(2)
    with torch.no_grad():
        saved.model.fc.weight.add_(1.0)
    saved.generator.manual_seed(1234)
    pointer = checkpoint.save_checkpoint(store, "resnet34", saved, str(tmp_path))
    assert pointer["epoch"] == 2 and pointer["key"] == "resnet34/checkpoint-epoch0002.pt"
    assert pointer["sha256"] == sha256_file(tmp_path / "run" / pointer["key"])
    fresh = state(0)
    assert checkpoint.load_latest(store, "resnet34", fresh, str(tmp_path))
    assert fresh.epoch == 2 and fresh.resumed_from_epoch == 2 and fresh.history == saved.history
    assert torch.equal(fresh.model.fc.weight, saved.model.fc.weight)
    assert torch.equal(fresh.generator.get_state(), saved.generator.get_state())


def test_newer_checkpoint_replaces_the_older(tmp_path):
    store = LocalStore(tmp_path / "run")
    checkpoint.save_checkpoint(store, "resnet34", state(1), str(tmp_path))
    checkpoint.save_checkpoint(store, "resnet34", state(2), str(tmp_path))
    assert sorted(k for k in store.list() if k.endswith(".pt")) == ["resnet34/checkpoint-epoch0002.pt"]


def test_data_without_a_pointer_is_never_loaded(tmp_path):
    """A checkpoint whose upload was cut off before its pointer was written does not exist."""
    store = LocalStore(tmp_path / "run")
    store.write_bytes("resnet34/checkpoint-epoch0005.pt", b"half an upl")
    fresh = state(0)
    assert not checkpoint.load_latest(store, "resnet34", fresh, str(tmp_path))
    assert fresh.epoch == 0


def test_corrupted_checkpoint_is_refused(tmp_path):
    store = LocalStore(tmp_path / "run")
    pointer = checkpoint.save_checkpoint(store, "resnet34", state(1), str(tmp_path))
    store.write_bytes(pointer["key"], b"tampered")
    with pytest.raises(StorageError, match="sha256 does not match"):
        checkpoint.load_latest(store, "resnet34", state(0), str(tmp_path))
    store.write_bytes("resnet34/checkpoint.json", b"{not json")
    with pytest.raises(StorageError, match="corrupt checkpoint pointer"):
        checkpoint.load_latest(store, "resnet34", state(0), str(tmp_path))


def test_checkpoint_of_another_split_is_refused(tmp_path):
    store = LocalStore(tmp_path / "run")
    checkpoint.save_checkpoint(store, "resnet34", state(1), str(tmp_path))
    other = state(0, provenance={"split": {"train": ["x"], "val": ["y"]}, "augmentation_seed": 0})
    with pytest.raises(ConfigError, match="another split or augmentation seed"):
        checkpoint.load_latest(store, "resnet34", other, str(tmp_path))


def test_final_weights_are_safetensors_with_their_digest(tmp_path):
    from safetensors.torch import load_file

    store = LocalStore(tmp_path / "run")
    s = state(3)
    info = checkpoint.save_weights(store, "resnet34", s.model, str(tmp_path))
    path = tmp_path / "run" / "resnet34" / "model.safetensors"
    assert info == {"uri": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size}
    loaded = load_file(path)
    assert torch.equal(loaded["fc.weight"], s.model.fc.weight)
    assert json.loads(json.dumps(info)) == info  # report-ready: survives JSON unchanged


def test_same_weights_give_the_same_sha256(tmp_path):
    """The report's sha256 identifies the weights: identical models, identical files."""
    s = state(1)
    digests = {checkpoint.save_weights(LocalStore(tmp_path / f"r{i}"), "resnet34", s.model, str(tmp_path))["sha256"]
               for i in range(6)}
    assert len(digests) == 1


# ------------------------------------------------------------------ time-based checkpoints, uploads off the training thread

def tiny_train_data():
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(4, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    labels = torch.arange(4) % 2
    return train.TrainData(images, labels, images[:2], labels[:2])


class CrashAfter(train.NullObserver):
    """A fake clock where each epoch takes 4 s; the process 'dies' after epoch ``crash``."""

    def __init__(self, crash=None):
        self.now, self.crash = 0.0, crash

    def __call__(self):
        return self.now

    def on_epoch(self, model_name, record, total_epochs):
        self.now += 4.0
        if record["epoch"] == self.crash:
            raise KeyboardInterrupt  # stands in for kill -9: no checkpoint on the way out


def test_time_based_checkpoint_is_written_and_resumable(tmp_path):
    """checkpoint_interval_s alone (no epoch interval) writes a checkpoint, and a run killed
    after it resumes from it."""
    cfg = TrainConfig(epochs=3, batch_size=4, checkpoint_every=0, checkpoint_interval_s=3)
    cpu, data, store = torch.device("cpu"), tiny_train_data(), LocalStore(tmp_path / "run")

    def run(observer):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2))  # fast; any model will do
        s = train.TrainState(model, *train.make_optimizer(model, cfg), torch.Generator().manual_seed(0),
                             provenance={"split": "tiny"})
        with checkpoint.CheckpointWriter(store, "resnet34", str(tmp_path)) as writer:
            checkpoint.load_latest(store, "resnet34", s, str(tmp_path))
            train.fit("resnet34", s, data, cfg, train.Preprocess(cpu), None, observer, train.StopFlag(), writer.save,
                      clock=observer)
        return s

    with pytest.raises(KeyboardInterrupt):
        run(CrashAfter(crash=2))
    assert checkpoint.read_pointer(store, "resnet34")["epoch"] == 1  # 4 s >= 3 s after epoch 1
    resumed = run(CrashAfter())
    assert resumed.resumed_from_epoch == 1 and [h["epoch"] for h in resumed.history] == [1, 2, 3]


def s3_store(bucket):
    from gistnet.config import StorageConfig
    from gistnet.data.storage import open_store

    return open_store(f"s3://{bucket}/run", StorageConfig(max_attempts=2))


def test_remote_checkpoints_upload_in_the_background(bucket, s3_env, tmp_path):
    import threading

    store = s3_store(bucket)
    upload_threads = []
    upload = store.upload_file

    def recording_upload(*args, **kwargs):
        upload_threads.append(threading.current_thread())
        return upload(*args, **kwargs)

    store.upload_file = recording_upload
    with checkpoint.CheckpointWriter(store, "resnet34", str(tmp_path)) as writer:
        assert writer.background
        writer.save(state(1))
        writer.save(state(2))  # waits for the first upload, then starts its own
        pointer = writer.wait()
    assert pointer["epoch"] == 2 and checkpoint.read_pointer(store, "resnet34") == pointer
    assert sorted(k for k in store.list() if k.endswith(".pt")) == ["resnet34/checkpoint-epoch0002.pt"]
    assert len(upload_threads) == 2 and threading.main_thread() not in upload_threads
    fresh = state(0)
    assert checkpoint.load_latest(store, "resnet34", fresh, str(tmp_path)) and fresh.epoch == 2


def test_a_failed_background_upload_is_a_storage_error_on_the_training_thread(s3_env, tmp_path):
    store = s3_store("gistnet-no-such-bucket")
    writer = checkpoint.CheckpointWriter(store, "resnet34", str(tmp_path))
    writer.save(state(1))  # returns: the upload runs in the background
    with pytest.raises(StorageError, match="gistnet-no-such-bucket"):
        writer.wait()
    writer.save(state(2))
    with pytest.raises(StorageError, match="gistnet-no-such-bucket"):
        writer.save(state(3))  # the next save reports the pending upload's failure
    from gistnet.errors import Interrupted

    with pytest.raises(StorageError), writer:  # a SIGTERM exit waits for the upload: its failure is the outcome
        writer.save(state(4))
        raise Interrupted("stopped by SIGTERM")


class SlowStore(LocalStore):
    """A local folder whose uploads take half a second, like a slow bucket."""

    def upload_file(self, key, path, sha256=None):
        import time

        time.sleep(0.5)
        super().upload_file(key, path, sha256)


def test_a_stop_checkpoint_is_stored_before_save_returns(tmp_path):
    """A background upload returns at once; the stop checkpoint (durable) returns only once the
    object and its pointer are stored, so no rank exits while rank 0 still uploads."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    s = train.TrainState(model, *train.make_optimizer(model, CFG), torch.Generator().manual_seed(0), epoch=1)
    store = SlowStore(tmp_path / "run")
    with checkpoint.CheckpointWriter(store, "resnet34", str(tmp_path), background=True) as writer:
        writer.save(s)
        assert checkpoint.read_pointer(store, "resnet34") is None  # still uploading on its thread
        s.epoch = 2
        writer.save(s, durable=True)
        assert checkpoint.read_pointer(store, "resnet34")["epoch"] == 2
