import pickle

import pytest
import torch
from safetensors.torch import save_file

from gistnet.evidence import evaluate
from gistnet.training import train
from gistnet.config import TrainConfig
from gistnet.errors import ConfigError, DataError, DeviceError, DivergedError, Interrupted


class Recorder(train.NullObserver):
    def __init__(self):
        self.steps, self.epochs = 0, []

    def on_step(self, model_name, images):
        self.steps += images

    def on_epoch(self, model_name, record, total_epochs):
        self.epochs.append(record)


def tiny_data(n=16, size=32):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)
    labels = torch.arange(n) % 2
    images[labels == 1, :, 8:24, 8:24] = 0  # a dark square marks the positive class
    return train.TrainData(images, labels, images[:8], labels[:8])


def small_state(cfg):
    """A TrainState around a small convnet: fit's bookkeeping at a fraction of a ResNet's cost."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 2))
    return train.TrainState(model, *train.make_optimizer(model, cfg), torch.Generator().manual_seed(0))


def test_cuda_without_gpu_is_a_device_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        train.resolve_device("cuda")
    assert train.resolve_device("auto").type == "cpu"


@pytest.mark.parametrize("name", ["resnet34", "resnet50"])
def test_models_have_two_classes(name):
    model = train.build_model(name)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 2)


def test_init_weights_from_safetensors_and_torch(tmp_path):
    source = train.build_model("resnet34")
    imagenet_like = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    imagenet_like["fc.weight"] = torch.zeros(1000, 512)  # a 1000-class head is skipped
    save_file(imagenet_like, tmp_path / "w.safetensors")
    torch.save(source.state_dict(), tmp_path / "w.pt")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pt"):
        model = train.build_model("resnet34", str(path))
        assert torch.equal(model.conv1.weight, source.conv1.weight)


class Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/gistnet-pwned",))


def test_malicious_pickle_is_never_executed(tmp_path):
    import os

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": Evil()}, f)
    torch.save({"x": Evil()}, tmp_path / "evil2.pt")
    for p in (path, tmp_path / "evil2.pt"):
        with pytest.raises(ConfigError, match="not loadable as weights without executing code"):
            train.build_model("resnet34", str(p))
    assert not os.path.exists("/tmp/gistnet-pwned")


def _val_loss(state, data, preprocess):
    predictions = evaluate.predict(state.model, data.val_images, data.val_labels, 8, preprocess)
    return float(predictions.loss_sum) / len(data.val_labels)


@pytest.mark.e2e  # trains ResNet-34 (the slowest unit tests: make test-fast under 3 min)
def test_fit_learns_and_reports_each_epoch():
    cfg = TrainConfig(models=("resnet34",), epochs=3, batch_size=8, checkpoint_every=0)
    data = tiny_data()
    preprocess = train.Preprocess(torch.device("cpu"))
    state = train.new_state("resnet34", cfg, torch.device("cpu"), None)
    loss_before = _val_loss(state, data, preprocess)
    rec = Recorder()
    saved = []
    train.fit("resnet34", state, data, cfg, preprocess, None, rec, train.StopFlag(), saved.append)
    assert [r["epoch"] for r in rec.epochs] == [1, 2, 3]
    assert rec.steps == 3 * 16
    assert saved == []  # checkpoint_every=0 and no SIGTERM
    assert state.history == rec.epochs
    for r in rec.epochs:
        assert r["images"] == 16 and 0 < r["train_seconds"] <= r["seconds"]
        assert 0 <= r["train_accuracy"] <= 1 and r["train_loss"] > 0
    # it learned: the dark square separates the classes of the validation images
    assert rec.epochs[-1]["val_loss"] < loss_before, (loss_before, rec.epochs)
    assert rec.epochs[-1]["val_accuracy"] > 0.5, rec.epochs


class BatchRecorder(train.Preprocess):
    """Records which images (by their index, stored in pixel 0) each training step saw."""

    def __init__(self):
        super().__init__(torch.device("cpu"))
        object.__setattr__(self, "batches", [])

    def __call__(self, images):
        self.batches.append(sorted(round(v) for v in (images[:, 0, 0, 0] * 255).tolist()))
        return super().__call__(images)


def indexed_data(n, size=32):
    data = tiny_data(n, size)
    data.train_images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return data


def test_every_step_is_a_full_batch_and_each_epoch_drops_other_images():
    """20 images at batch 8: two steps of 8 per epoch, the 4 others left out, not always the same 4.
    The batching is train_one_epoch's, whatever the network: a small convnet (``small_state``)."""
    cfg = TrainConfig(epochs=3, batch_size=8)
    data = indexed_data(20)
    state = small_state(cfg)
    dropped = []
    for _ in range(3):
        preprocess, steps = BatchRecorder(), []
        _, _, seen = train.train_one_epoch(state, data, cfg.batch_size, preprocess, None, steps.append)
        assert steps == [8, 8] and seen == 16
        assert [len(b) for b in preprocess.batches] == [8, 8]
        used = [i for b in preprocess.batches for i in b]
        assert len(set(used)) == 16
        dropped.append(frozenset(range(20)) - set(used))
    assert len(set(dropped)) > 1, dropped


@pytest.mark.parametrize("n, batch_size", [(6, 8), (1, 2)])
def test_a_training_set_smaller_than_one_batch_is_refused(n, batch_size):
    cfg = TrainConfig(epochs=1, batch_size=batch_size, checkpoint_every=0)
    state = train.new_state("resnet34", cfg, torch.device("cpu"), None)
    before = state.model.fc.weight.detach().clone()
    with pytest.raises(DataError, match=f"has {n} images, fewer than one batch of train.batch_size={batch_size}"):
        train.fit("resnet34", state, tiny_data(n), cfg, train.Preprocess(torch.device("cpu")), None,
                  train.NullObserver(), train.StopFlag(), lambda s: None)
    assert state.history == [] and torch.equal(state.model.fc.weight, before)


@pytest.mark.e2e  # trains ResNet-34 (the slowest unit tests: make test-fast under 3 min)
def test_fit_is_deterministic_on_cpu():
    cfg = TrainConfig(epochs=1, batch_size=8, checkpoint_every=0)
    weights = []
    for _ in range(2):
        state = train.new_state("resnet34", cfg, torch.device("cpu"), None)
        train.fit("resnet34", state, tiny_data(), cfg, train.Preprocess(torch.device("cpu")), None,
                  train.NullObserver(), train.StopFlag(), lambda s: None)
        weights.append(state.model.fc.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_stop_flag_checkpoints_and_interrupts():
    cfg = TrainConfig(epochs=5, batch_size=8)
    state = small_state(cfg)  # the stop is fit's bookkeeping: any model shows it
    stop = train.StopFlag()
    stop.set()
    saved = []
    with pytest.raises(Interrupted, match="after epoch 1/5"):
        train.fit("resnet34", state, tiny_data(), cfg, train.Preprocess(torch.device("cpu")), None,
                  train.NullObserver(), stop, lambda s, durable=False: saved.append((s.epoch, durable)))
    assert saved == [(1, True)]  # stored before fit returns: no rank may exit first


def test_non_finite_loss_is_reported():
    cfg = TrainConfig(epochs=2, batch_size=8, learning_rate=1e30, optimizer="sgd", checkpoint_every=0)
    state = small_state(cfg)  # fit's check of the loss, not the architecture, is under test
    with pytest.raises(DivergedError, match="resnet34: non-finite loss at epoch"):
        train.fit("resnet34", state, tiny_data(), cfg, train.Preprocess(torch.device("cpu")), None,
                  train.NullObserver(), train.StopFlag(), lambda s: None)


# ------------------------------------------------------------------ normalisation: no per-step host work

def test_preprocess_matches_torchvision_normalize():
    from torchvision.transforms.v2 import functional as F

    images = tiny_data().train_images[:4]
    expected = F.normalize(images.float() / 255.0, list(train.IMAGENET_MEAN), list(train.IMAGENET_STD))
    preprocess = train.Preprocess(torch.device("cpu"))
    torch.testing.assert_close(preprocess(images), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(preprocess(images.float() / 255.0), expected, rtol=0, atol=1e-5)


def test_normalisation_constants_are_built_once(monkeypatch):
    preprocess = train.Preprocess(torch.device("cpu"))
    built = []
    for name in ("tensor", "as_tensor"):
        original = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _original=original, **k: built.append(a) or _original(*a, **k))
    images = tiny_data().train_images[:4]
    for _ in range(3):
        preprocess(images)
        preprocess(images.float() / 255.0)
    assert built == []


def test_preprocess_makes_no_host_to_device_copy():
    """The meta device stands in for a GPU: after construction, no call copies from the host."""
    from tests.conftest import host_device_copies

    preprocess = train.Preprocess(torch.device("meta"))
    images = torch.empty(4, 3, 32, 32, dtype=torch.uint8, device="meta")
    assert host_device_copies(lambda: (preprocess(images), preprocess(images.float()))) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_step_inputs_make_no_host_sync_on_cuda():
    device = torch.device("cuda")
    preprocess = train.Preprocess(device)
    images = tiny_data().train_images.to(device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        preprocess(images)
        preprocess(images.float() / 255.0)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ------------------------------------------------------------------ checkpoint timing

class EpochClock(train.NullObserver):
    """A fake clock: each epoch takes ``seconds``."""

    def __init__(self, seconds):
        self.now, self.seconds = 0.0, seconds

    def __call__(self):
        return self.now

    def on_epoch(self, model_name, record, total_epochs):
        self.now += self.seconds


# train_one_epoch is stubbed out, so no optimizer step precedes the scheduler's and torch warns.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")
@pytest.mark.parametrize("every, interval, saved", [(0, 10, [3, 6]), (5, 10, [3, 5]), (0, 0, []),
                                                    (4, 0, [4])])
def test_checkpoints_by_epoch_and_by_time(every, interval, saved, monkeypatch):
    """4 s per epoch, 7 epochs: a 10 s interval saves after epochs 3 and 6 (not after the
    last: the pipeline saves that one); epoch and time triggers combine."""
    monkeypatch.setattr(train, "train_one_epoch", lambda *a: (torch.zeros(()), torch.zeros((), dtype=torch.long), 2))
    cfg = TrainConfig(epochs=7, batch_size=4, checkpoint_every=every, checkpoint_interval_s=interval)
    state = small_state(cfg)
    data = tiny_data(n=4)
    data = train.TrainData(data.train_images, data.train_labels, data.val_images[:2], data.val_labels[:2])
    clock, epochs = EpochClock(4.0), []
    train.fit("resnet34", state, data, cfg, train.Preprocess(torch.device("cpu")), None, clock, train.StopFlag(),
              lambda s: epochs.append(s.epoch), clock=clock)
    assert epochs == saved


# ------------------------------------------------------------------ CUDA RNG: the training device only

OLD_CHECKPOINT_CUDA_RNG = [torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)]


def test_cpu_training_never_touches_cuda(monkeypatch):
    """--device cpu: no CUDA call saving or restoring a state, even an old one with two GPU states."""
    def no_cuda(*args, **kwargs):
        raise AssertionError("CUDA touched by a CPU run")

    for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all", "is_available",
                 "device_count", "current_device"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)
    cfg = TrainConfig(epochs=1, batch_size=8, checkpoint_every=0)
    state = train.new_state("resnet34", cfg, torch.device("cpu"), None)
    saved = state.state_dict()
    assert saved["cuda_rng"] is None
    saved["cuda_rng"] = OLD_CHECKPOINT_CUDA_RNG
    train.new_state("resnet34", cfg, torch.device("cpu"), None).load_state_dict(saved)
    assert not torch.cuda.is_initialized()


def test_two_gpu_rng_states_resume_on_one(monkeypatch):
    """An old checkpoint holds one state per visible GPU; a node with one GPU restores its own."""
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((int(s[0]), device)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    for device, expected in ((torch.device("cuda"), 1), (torch.device("cuda", 1), 2), (torch.device("cuda", 5), 1)):
        train.restore_cuda_rng_state(OLD_CHECKPOINT_CUDA_RNG, device)
        assert restored.pop() == (expected, device)
    train.restore_cuda_rng_state(OLD_CHECKPOINT_CUDA_RNG[1], torch.device("cuda", 0))  # the new format: one state
    assert restored.pop() == (2, torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.full((16,), 7, dtype=torch.uint8))
    assert int(train.cuda_rng_state(torch.device("cuda", 0))[0]) == 7


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_old_checkpoint_resumes_on_the_gpu():
    cfg = TrainConfig(epochs=1, batch_size=8, checkpoint_every=0)
    device = torch.device("cuda")
    state = train.new_state("resnet34", cfg, device, None)
    saved = state.state_dict()
    assert isinstance(saved["cuda_rng"], torch.Tensor)
    saved["cuda_rng"] = [saved["cuda_rng"], saved["cuda_rng"].clone(), saved["cuda_rng"].clone()]
    train.new_state("resnet34", cfg, device, None).load_state_dict(saved)
    assert torch.equal(torch.cuda.get_rng_state(device), saved["cuda_rng"][0])


# ------------------------------------------------------------------ validation in fp32, like the report

def test_validation_is_fp32_even_when_training_is_bf16(monkeypatch):
    """Training steps under bf16 autocast (the CUDA setting, simulated on CPU): the history's
    validation numbers still equal a separate fp32 evaluation, like the report's."""
    from gistnet.evidence import evaluate

    monkeypatch.setattr(train, "_autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    cfg = TrainConfig(epochs=1, batch_size=8, checkpoint_every=0)
    state = small_state(cfg)
    data, preprocess = tiny_data(n=8), train.Preprocess(torch.device("cpu"))
    train.fit("resnet34", state, data, cfg, preprocess, None, train.NullObserver(), train.StopFlag(), lambda s: None)
    final = evaluate.predict(state.model, data.val_images, data.val_labels, cfg.batch_size, preprocess)
    last = state.history[-1]
    assert last["val_loss"] == float(final.loss_sum) / len(data.val_labels)
    assert last["val_accuracy"] == float(((final.probabilities >= 0.5).long() == data.val_labels).float().mean())


def test_paper_set_trains_exactly_like_the_materialized_six_fold_set():
    from gistnet.data import augmentation
    from gistnet.config import AugmentationConfig

    cfg = TrainConfig(epochs=1, batch_size=8, checkpoint_every=0)
    originals = tiny_data(n=6)
    gray = originals.train_images[:, :1].contiguous()  # held as one channel, like an EUS data set
    aug = AugmentationConfig()
    expanded, expanded_labels, _ = augmentation.expand_paper(gray, originals.train_labels, aug, seed=0)
    materialized = train.TrainData(expanded, expanded_labels, gray, originals.train_labels)
    on_the_fly = train.TrainData(gray, originals.train_labels, gray, originals.train_labels,
                                 augmentation.PaperSet(gray, originals.train_labels, aug, seed=0))
    histories = []
    for data in (materialized, on_the_fly):
        state = small_state(cfg)  # the same initial weights each time; the data path is under test
        train.fit("resnet34", state, data, cfg, train.Preprocess(torch.device("cpu")), None, train.NullObserver(),
                  train.StopFlag(), lambda s: None)
        histories.append([{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in state.history])
    assert histories[0] == histories[1]
    assert histories[0][0]["images"] == 32  # 36 augmented images, full batches of 8


def test_preprocess_expands_a_gray_batch_like_its_three_channel_copy():
    gray = (torch.rand(2, 1, 8, 8) * 255).to(torch.uint8)
    preprocess = train.Preprocess(torch.device("cpu"))
    assert torch.equal(preprocess(gray), preprocess(gray.expand(-1, 3, -1, -1)))
