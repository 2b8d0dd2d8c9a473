"""``gistnet bench``: training throughput on this machine, three ways, on the same device.

(a) ``model-only``: forward, backward and optimizer step on random data already on the
    device: the ceiling for this model, batch and compile mode.
(b) ``gistnet-step``: gistnet's own epoch loop (``train.train_one_epoch``) on the paper's 6x
    set made on the fly (``augmentation.PaperSet``) from uint8 grayscale images on the
    device, with ``train.Preprocess``: what a run gets.
(c) ``torchvision-reference``: the usual pipeline, PNG bytes decoded with PIL and augmented
    with ``torchvision.transforms.v2`` in DataLoader worker processes, fp32 eager step.

The ratios b/a (how close gistnet gets to the model's ceiling) and b/c (its gain over the
reference) are printed per model. Nothing is timed before ``warmup`` steps have run.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass

import torch

from gistnet.data import augmentation
from gistnet.training import train
from gistnet.training import compile as compiling
from gistnet.config import AugmentationConfig, TrainConfig


@dataclass(frozen=True)
class BenchSettings:
    device: torch.device
    models: tuple[str, ...] = ("resnet34", "resnet50")
    batch_size: int = 32
    image_size: int = 224
    steps: int = 30
    warmup: int = 5
    workers: int = 8
    compile: str = "auto"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _state(model: str, s: BenchSettings) -> train.TrainState:
    return train.new_state(model, TrainConfig(models=(model,), batch_size=s.batch_size, epochs=1), s.device, None)


def _result(name: str, model: str, s: BenchSettings, images: int, seconds: float, **extra) -> dict:
    return {"name": name, "model": model, "device": compiling.device_name(s.device), "batch_size": s.batch_size,
            "image_size": s.image_size, "steps": s.steps, "img_per_s": images / seconds, **extra}


def model_only(model: str, s: BenchSettings) -> dict:
    """(a) fwd/bwd/step on device-resident random data."""
    state = _state(model, s)
    mode = compiling.resolve_mode(s.compile, s.device)
    forward = compiling.compiled_forward(state.model, mode)
    x = torch.randn(s.batch_size, 3, s.image_size, s.image_size, device=s.device)
    if s.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (s.batch_size,), device=s.device)
    state.model.train()
    started = 0.0
    for step in range(s.warmup + s.steps):
        if step == s.warmup:
            _sync(s.device)
            started = time.perf_counter()
        with train._autocast(s.device):
            loss = torch.nn.functional.cross_entropy(forward(x).float(), y)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
    _sync(s.device)
    return _result("model-only", model, s, s.steps * s.batch_size, time.perf_counter() - started, compile=mode)


def gistnet_step(model: str, s: BenchSettings) -> dict:
    """(b) gistnet's epoch loop on PaperSet batches: augmentation, preprocessing and step."""
    state = _state(model, s)
    mode = compiling.resolve_mode(s.compile, s.device)
    state.forward = compiling.compiled_forward(state.model, mode)
    batches = s.warmup + s.steps
    originals = math.ceil(batches * s.batch_size / (len(augmentation.OPERATIONS) + 1))
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(originals, 1, s.image_size, s.image_size, generator=gen) * 255).to(torch.uint8)
    images, labels = images.to(s.device), (torch.arange(originals) % 2).to(s.device)
    paper = augmentation.PaperSet(images, labels, AugmentationConfig(), seed=0)
    data = train.TrainData(images, labels, images[:2], labels[:2], paper)
    clock = {"steps": 0, "started": 0.0, "images": 0}

    def on_step(n: int) -> None:
        clock["steps"] += 1
        if clock["steps"] == s.warmup:
            _sync(s.device)
            clock["started"] = time.perf_counter()
        elif clock["steps"] > s.warmup:
            clock["images"] += n

    batch_size = s.batch_size
    train.train_one_epoch(state, data, batch_size, train.Preprocess(s.device), None, on_step)
    _sync(s.device)
    return _result("gistnet-step", model, s, clock["images"], time.perf_counter() - clock["started"], compile=mode,
                   augmentation="paper (on the fly)")


class _EncodedImages(torch.utils.data.Dataset):
    """PNG bytes decoded with PIL and augmented with transforms.v2, as a reference pipeline does."""

    def __init__(self, encoded: list[bytes], n: int, transform):
        self.encoded, self.n, self.transform = encoded, n, transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(io.BytesIO(self.encoded[i % len(self.encoded)])) as img:
            return self.transform(img.convert("RGB")), i % 2


def _reference_transform(size: int):
    from torchvision.transforms import v2

    return v2.Compose([v2.PILToTensor(), v2.RandomRotation(30), v2.RandomHorizontalFlip(),
                       v2.RandomEqualize(), v2.Resize(size, antialias=True), v2.CenterCrop(size),
                       v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(train.IMAGENET_MEAN, train.IMAGENET_STD)])


def _encoded_images(count: int, size: int) -> list[bytes]:
    from gistnet.data import synth

    return [synth.generate(("GIST", "LM")[i % 2], i, size, seed=0)[0] for i in range(count)]


def torchvision_reference(model: str, s: BenchSettings) -> dict:
    """(c) PIL decode + transforms.v2 in DataLoader workers, fp32 eager step."""
    state = _state(model, s)
    n = (s.warmup + s.steps) * s.batch_size
    dataset = _EncodedImages(_encoded_images(min(n, 64), s.image_size), n, _reference_transform(s.image_size))
    loader = torch.utils.data.DataLoader(dataset, batch_size=s.batch_size, shuffle=True, num_workers=s.workers,
                                         pin_memory=s.device.type == "cuda", drop_last=True)
    state.model.train()
    started, images = 0.0, 0
    for step, (x, y) in enumerate(loader):
        if step == s.warmup:
            _sync(s.device)
            started = time.perf_counter()
        x, y = x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)
        loss = torch.nn.functional.cross_entropy(state.model(x), y)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        if step >= s.warmup:
            images += len(y)
    _sync(s.device)
    return _result("torchvision-reference", model, s, images, time.perf_counter() - started, compile="off",
                   workers=s.workers, precision="fp32")


def run(s: BenchSettings):
    """Every measurement for every model as it is made, then one ratio record per model."""
    for model in s.models:
        a = model_only(model, s)
        yield a
        b = gistnet_step(model, s)
        yield b
        c = torchvision_reference(model, s)
        yield c
        yield {"name": "ratios", "model": model, "gistnet_over_model_only": b["img_per_s"] / a["img_per_s"],
               "gistnet_over_reference": b["img_per_s"] / c["img_per_s"]}


def format_row(r: dict) -> str:
    if r["name"] == "ratios":
        return (f"{'ratio b/a, b/c':<24}{r['model']:<10}{'':>10}  gistnet/model-only "
                f"{r['gistnet_over_model_only']:.2f}, gistnet/reference {r['gistnet_over_reference']:.2f}")
    notes = f"compile {r['compile']}, {r['device']}, batch {r['batch_size']}, {r['image_size']} px"
    return f"{r['name']:<24}{r['model']:<10}{r['img_per_s']:>10.1f}  {notes}"


HEADER = f"{'measurement':<24}{'model':<10}{'img/s':>10}  notes"
