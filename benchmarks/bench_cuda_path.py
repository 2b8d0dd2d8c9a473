"""What the training thread pays for a checkpoint, and one online-augmentation batch.

    python benchmarks/bench_cuda_path.py

1. A ResNet-34 checkpoint with AdamW state: ``checkpoint.serialize`` (what the training
   thread does before a remote upload goes to the background) against a full synchronous
   save to a local folder (serialize, write, sha256, copy, pointer).
2. ``augmentation.online_batch``, both strategies (whole batch + ``torch.where``, the CUDA
   default; chosen images by host-computed indices, the default elsewhere), against the
   former boolean-index version (kept in tests/test_augmentation.py), batch 32 at 224 px on
   this machine's device. The host syncs they remove only cost time on a GPU.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gistnet import train  # noqa: E402
from gistnet.data import augmentation
from gistnet.training import checkpoint
from gistnet.config import AugmentationConfig, TrainConfig  # noqa: E402
from gistnet.data.storage import LocalStore  # noqa: E402
from tests.test_augmentation import reference_online_batch  # noqa: E402


def timed(fn, repeat=3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def checkpoint_costs(device: torch.device) -> None:
    cfg = TrainConfig(batch_size=2)
    state = train.new_state("resnet34", cfg, device, None)
    state.model(torch.zeros(2, 3, 64, 64, device=device)).sum().backward()
    state.optimizer.step()  # AdamW state exists: the checkpoint has its real size
    size = len(checkpoint.serialize(state))
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "run")
        serialize = timed(lambda: checkpoint.serialize(state))
        full = timed(lambda: checkpoint.save_checkpoint(store, "resnet34", state, tmp))
    print(f"resnet34 checkpoint {size / 1e6:.0f} MB: training thread blocks {serialize:.2f} s to serialize "
          f"(remote store); a synchronous local save takes {full:.2f} s")


def augmentation_costs(device: torch.device) -> None:
    cfg = AugmentationConfig(mode="online")
    x = torch.rand(32, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    gen = torch.Generator().manual_seed(0)

    def run(fn):
        fn(x, cfg, gen)
        if device.type == "cuda":
            torch.cuda.synchronize()

    where = timed(lambda: run(lambda *a: augmentation.online_batch(*a, whole_batch=True)))
    index = timed(lambda: run(lambda *a: augmentation.online_batch(*a, whole_batch=False)))
    old = timed(lambda: run(reference_online_batch))
    print(f"online_batch, 32 x 224 px on {device.type}: {where * 1e3:.0f} ms whole batch + torch.where, "
          f"{index * 1e3:.0f} ms chosen images by host indices, {old * 1e3:.0f} ms boolean index (former)")


if __name__ == "__main__":
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint_costs(device)
    augmentation_costs(device)
