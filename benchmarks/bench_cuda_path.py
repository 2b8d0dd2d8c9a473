"""What the training thread pays for a checkpoint, and one online-augmentation batch.

    python benchmarks/bench_cuda_path.py [--batch-size 32] [--image-size 224] [--repeat 3]

1. A ResNet-34 checkpoint with AdamW state: ``checkpoint.serialize`` (what the training
   thread does before a remote upload goes to the background) against a full synchronous
   save to a local folder (serialize, write, sha256, copy, pointer).
2. ``augmentation.online_batch``, both strategies (whole batch + ``torch.where``, the CUDA
   default; chosen images by host-computed indices, the default elsewhere), against the
   former boolean-index version (kept in tests/data/test_augmentation.py), batch 32 at 224 px
   on this machine's device. The host syncs they remove only cost time on a GPU.

The suite runs it at its smallest size (tests/test_scripts.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gistnet.config import AugmentationConfig, TrainConfig  # noqa: E402
from gistnet.data import augmentation  # noqa: E402
from gistnet.data.storage import LocalStore  # noqa: E402
from gistnet.training import checkpoint, train  # noqa: E402
from tests.data.test_augmentation import reference_online_batch  # noqa: E402


def timed(fn, repeat=3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def checkpoint_costs(device: torch.device, repeat: int) -> None:
    cfg = TrainConfig(batch_size=2)
    state = train.new_state("resnet34", cfg, device, None)
    state.model(torch.zeros(2, 3, 64, 64, device=device)).sum().backward()
    state.optimizer.step()  # AdamW state exists: the checkpoint has its real size
    size = len(checkpoint.serialize(state))
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "run")
        serialize = timed(lambda: checkpoint.serialize(state), repeat)
        full = timed(lambda: checkpoint.save_checkpoint(store, "resnet34", state, tmp), repeat)
    print(f"resnet34 checkpoint {size / 1e6:.0f} MB: training thread blocks {serialize:.2f} s to serialize "
          f"(remote store); a synchronous local save takes {full:.2f} s")


def augmentation_costs(device: torch.device, batch_size: int, size: int, repeat: int) -> None:
    cfg = AugmentationConfig(mode="online")
    x = torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    gen = torch.Generator().manual_seed(0)

    def run(fn):
        fn(x, cfg, gen)
        if device.type == "cuda":
            torch.cuda.synchronize()

    where = timed(lambda: run(lambda *a: augmentation.online_batch(*a, whole_batch=True)), repeat)
    index = timed(lambda: run(lambda *a: augmentation.online_batch(*a, whole_batch=False)), repeat)
    old = timed(lambda: run(reference_online_batch), repeat)
    print(f"online_batch, {batch_size} x {size} px on {device.type}: {where * 1e3:.0f} ms whole batch + torch.where, "
          f"{index * 1e3:.0f} ms chosen images by host indices, {old * 1e3:.0f} ms boolean index (former)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32, help="online_batch's batch")
    parser.add_argument("--image-size", type=int, default=224, help="online_batch's image size")
    parser.add_argument("--repeat", type=int, default=3, help="timings per measurement (the median is printed)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint_costs(device, args.repeat)
    augmentation_costs(device, args.batch_size, args.image_size, args.repeat)


if __name__ == "__main__":
    main()
