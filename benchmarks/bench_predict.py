"""Predict throughput: images scored per second at 224 px, torch vs ONNX Runtime, on CPU.

    python benchmarks/bench_predict.py [--threads 2] [--images 96] [--batch-size 32] [--models resnet34,resnet50]

Scores decoded uint8 images (what ``gistnet predict`` hands its engine) with the same
``trained.Scorer`` and the same exported ONNX graph ``gistnet export`` writes; the weights are
random (speed does not depend on them). One warm-up batch per engine is not timed.
Decoding and download are not included: they are the same for both engines.

Two rates per engine: wall-clock images/s, and images per CPU-second of this process
(``time.process_time``). On a machine shared with other jobs the wall rate drops with the
load while the CPU rate barely moves; ``threads x`` the CPU rate bounds what ``threads``
idle cores would give.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from gistnet.serving import export
from gistnet import models
from gistnet.serving import trained


def throughput(score, images: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU-second of this process)."""
    score(images[:batch_size])  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    for begin in range(0, len(images), batch_size):
        score(images[begin:begin + batch_size])
    return len(images) / (time.perf_counter() - wall), len(images) / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--models", default="resnet34,resnet50")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {args.threads} threads, {args.images} images of {args.size} px, "
          f"batch {args.batch_size}")
    for name in args.models.split(","):
        torch.manual_seed(0)
        scorer = trained.Scorer(models.build_model(name).eval(), torch.device("cpu")).eval()
        with torch.no_grad():
            torch_rate = throughput(lambda x: scorer(x)[:, 1], images, args.batch_size)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            export._export(scorer, args.size, path, export.OPSET)
            session = export.OnnxScorer.session(str(path), "cpu", threads=args.threads)
            onnx_rate = throughput(lambda x: session.run([export.OUTPUT], {export.INPUT: x.numpy()})[0][:, 1],
                                   images, args.batch_size)
        for engine, (wall, cpu) in (("torch", torch_rate), ("onnxruntime", onnx_rate)):
            print(f"{name} {engine}: {wall:.1f} img/s wall, {cpu:.1f} img per CPU-second")


if __name__ == "__main__":
    main()
