"""How much the Prometheus updates cost next to a training step (issue: "updates cost
nothing measurable"). Run: python benchmarks/bench_metrics.py [--image-size 64] [--batch-size 32]

Prints the cost of one on_step/on_epoch call and of one ResNet-34 training step on this
machine's CPU at 64 px, batch 32, and the ratio. The suite runs it at its smallest size
(tests/test_scripts.py).
"""

import argparse
import time

import torch

from gistnet.training import train
from gistnet.config import TrainConfig
from gistnet.observe.metrics import RunMetrics


def per_call(fn, n):
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up)")
    parser.add_argument("--calls", type=int, default=100_000, help="timed on_step calls (on_epoch: a tenth)")
    args = parser.parse_args()
    size, batch = args.image_size, args.batch_size
    m = RunMetrics()
    m.model_started("resnet34", 200)
    record = {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.7, "val_loss": 0.6, "val_accuracy": 0.6,
              "images": 672, "train_seconds": 2.5, "seconds": 3.0}
    step_cost = per_call(lambda: m.on_step("resnet34", batch), args.calls)
    epoch_cost = per_call(lambda: m.on_epoch("resnet34", record, 200), max(1, args.calls // 10))

    cfg = TrainConfig(batch_size=batch, epochs=1)
    state = train.new_state("resnet34", cfg, torch.device("cpu"), None)
    x = torch.randint(0, 255, (batch, 3, size, size), dtype=torch.uint8)
    y = torch.arange(batch) % 2
    data = train.TrainData(x, y, x[:2], y[:2])
    pre = train.Preprocess(torch.device("cpu"))
    train.train_one_epoch(state, data, batch, pre, None, lambda n: None)  # warm-up
    start = time.perf_counter()
    for _ in range(args.steps):
        train.train_one_epoch(state, data, batch, pre, None, lambda n: None)
    train_step = (time.perf_counter() - start) / args.steps
    print(f"on_step: {step_cost * 1e6:.2f} us/call; on_epoch: {epoch_cost * 1e6:.2f} us/call")
    print(f"ResNet-34 training step (CPU, {size} px, batch {batch}): {train_step * 1e3:.1f} ms")
    print(f"metrics per step / training step: {step_cost / train_step:.2e}")


if __name__ == "__main__":
    main()
