"""Data-parallel training on CPU: 1 vs 2 processes, and the exit-abort trap.

    python benchmarks/bench_ddp.py throughput [--image-size 64] [--epochs 2] [--n-gist 69 --n-lm 73]
    python benchmarks/bench_ddp.py exit-loop [--runs 40] [--variant keep|delete|gistnet]

throughput: synthesizes 142 images, trains ResNet-34 under `torchrun --standalone` with 1 and
then 2 processes (same global batch 32, no augmentation, gloo), and prints each epoch's
training images/s and seconds from the report (the first epoch includes warm-up). One
process runs with 1 and with 2 threads (OMP_NUM_THREADS), two processes with 1 thread each.

exit-loop: repeats a small DDP run N times (2 processes, gloo, torchrun) and counts the runs
that did not exit 0. `keep` destroys the process group while the DDP model and its optimizer
are alive (what the issue measured 12/40 aborts with on torch 2.14.1); `delete` deletes them
first (gistnet's teardown; 0/40 in the issue); `gistnet` runs `gistnet train` itself for 1
epoch at 32 px. Every run is bounded by a timeout (a hang counts as a failure).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]

TOY = textwrap.dedent("""
    import gc, os, sys
    import torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    import torchvision
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = DistributedDataParallel(torchvision.models.resnet18(num_classes=2))
    opt = torch.optim.AdamW(model.parameters())
    for _ in range(3):
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 2, (8,))
        opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
    if sys.argv[1] == "delete":
        del model, opt
        gc.collect()
    dist.destroy_process_group()
""")


def _env(threads: int = 1) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}


def throughput(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-ddp-"))
    subprocess.run([sys.executable, "-m", "gistnet", "synth", "--output", str(work / "data"),
                    "--image-size", str(args.image_size), "--n-gist", str(args.n_gist), "--n-lm", str(args.n_lm)],
                   check=True, capture_output=True)
    # (processes, threads each): one process with one thread, one with both cores, two with one each.
    for procs, threads in ((1, 1), (1, 2), (2, 1)):
        run_id = f"p{procs}t{threads}"
        started = time.perf_counter()
        done = subprocess.run([*TORCHRUN, f"--nproc-per-node={procs}", "-m", "gistnet", "train", "--data",
                               str(work / "data"), "--output", str(work / "runs"), "--run-id", run_id, "--models",
                               "resnet34", "--epochs", str(args.epochs), "--image-size", str(args.image_size),
                               "--batch-size", "32", "--augmentation", "none", "--device", "cpu"],
                              capture_output=True, text=True, env=_env(threads))
        if done.returncode != 0:
            sys.exit(f"{procs} process(es) x {threads} thread(s): gistnet train exited {done.returncode}:\n"
                     f"{done.stderr[-3000:]}")
        wall = time.perf_counter() - started
        history = json.loads((work / "runs" / run_id / "report.json").read_text())["models"]["resnet34"]["history"]
        for e in history:
            print(f"{procs} process(es) x {threads} thread(s)  epoch {e['epoch']}: {e['images'] / e['seconds']:.1f} img/s, "
                  f"{e['seconds']:.1f} s ({e['images']} images)")
        print(f"{procs} process(es) x {threads} thread(s)  whole command: {wall:.1f} s")


def exit_loop(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-ddp-exit-"))
    script = work / "toy.py"
    script.write_text(TOY)
    if args.variant == "gistnet":
        subprocess.run([sys.executable, "-m", "gistnet", "synth", "--output", str(work / "data"), "--n-gist", "20",
                        "--n-lm", "20", "--image-size", "32"], check=True, capture_output=True)
    failures = []
    for i in range(args.runs):
        if args.variant == "gistnet":
            command = [*TORCHRUN, "--nproc-per-node=2", "-m", "gistnet", "train", "--data", str(work / "data"),
                       "--output", str(work / "runs"), "--run-id", f"r{i}", "--models", "resnet34", "--epochs", "1",
                       "--image-size", "32", "--batch-size", "8", "--augmentation", "none", "--device", "cpu"]
        else:
            command = [*TORCHRUN, "--nproc-per-node=2", str(script), args.variant]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=_env())
            code, tail = done.returncode, done.stderr.strip().splitlines()[-1:] or [""]
        except subprocess.TimeoutExpired:
            code, tail = "timeout", [""]
        if code != 0:
            failures.append((i, code, tail[0][:160]))
        print(f"run {i + 1}/{args.runs}: exit {code}", flush=True)
    print(f"{args.variant}: {len(failures)} of {args.runs} runs did not exit 0")
    for i, code, tail in failures:
        print(f"  run {i + 1}: exit {code}: {tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--image-size", type=int, default=64)
    t.add_argument("--epochs", type=int, default=2)
    t.add_argument("--n-gist", type=int, default=69, help="synthetic GIST images (the paper's 69; the global "
                   "batch is 32, so at least 40 images in all)")
    t.add_argument("--n-lm", type=int, default=73, help="synthetic leiomyoma images (the paper's 73)")
    e = sub.add_parser("exit-loop")
    e.add_argument("--runs", type=int, default=40)
    e.add_argument("--variant", choices=("keep", "delete", "gistnet"), default="gistnet")
    e.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    throughput(args) if args.what == "throughput" else exit_loop(args)


if __name__ == "__main__":
    main()
