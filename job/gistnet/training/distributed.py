"""Data-parallel training across processes started by ``torchrun``.

``torchrun`` (or Kubeflow Trainer, or the chart's Indexed Job, which both end in
``torchrun``) sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` for each process. gistnet reads them, joins the process group (NCCL on
CUDA, gloo on CPU) and wraps the model in ``DistributedDataParallel``. Without them it is
one process, exactly as before: every helper below is then a no-op.

The batch. Every rank holds the whole (small) data set and draws the same epoch order from
the same seeded generator; global batch ``i`` is ``order[i*B:(i+1)*B]`` and rank ``r``
trains on its ``r``-th contiguous slice of ``B / world_size`` images. So by default the
global batch stays ``train.batch_size`` (it must divide by the world size): the optimizer
sees the same batches, in the same order, as a single-process run; online augmentation draws
the global batch's random parameters on every rank and applies its slice of them
(``epoch_batches``), so it matches that run too. With
``distributed.scale_batch: true`` every rank takes ``train.batch_size`` images, the global
batch is ``batch_size * world_size``, and the learning rate is multiplied by the world size
(the linear scaling rule of Goyal et al. 2017, "Accurate, Large Minibatch SGD").

Only rank 0 writes (checkpoints, weights, report, Pushgateway); every rank serves
``/metrics`` on ``metrics.port + LOCAL_RANK`` with a ``rank`` label, so the ranks of one
node never collide on a port.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator, Mapping

import torch

from gistnet.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """Where this process stands among the training processes."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes."""
        return self.rank == 0


SINGLE = World()


def _int_env(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected an integer (set by torchrun)") from None


def world_from_env(environ: Mapping[str, str] | None = None) -> World:
    """The world ``torchrun`` describes in the environment; one process without it."""
    environ = os.environ if environ is None else environ
    world = World(_int_env(environ, "WORLD_SIZE", 1), _int_env(environ, "RANK", 0),
                  _int_env(environ, "LOCAL_RANK", 0))
    if world.size < 1 or not 0 <= world.rank < world.size or world.local_rank < 0:
        raise ConfigError(f"WORLD_SIZE={world.size}, RANK={world.rank}, LOCAL_RANK={world.local_rank}: "
                          "not a valid torchrun world (need 0 <= RANK < WORLD_SIZE)")
    return world


def device_for(world: World, device: torch.device) -> torch.device:
    """Each rank of a node on its own GPU (``cuda:LOCAL_RANK``); CPU ranks share the CPU."""
    if device.type != "cuda" or not world.distributed:
        return device
    if world.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {world.local_rank} has no GPU: {torch.cuda.device_count()} visible; "
                          "start at most one process per GPU (torchrun --nproc-per-node)")
    chosen = torch.device("cuda", world.local_rank)
    torch.cuda.set_device(chosen)
    return chosen


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(world: World, device: torch.device, timeout_s: float) -> Iterator[None]:
    """Join the process group for the duration; leave it cleanly whatever happens.

    Reported trap (torch 2.14.1, CPU/gloo): a process that destroys the group while a
    ``DistributedDataParallel`` model or its optimizer is still alive sometimes aborts at
    exit after training finished. The issue that reported it counted 12 of 40 runs, and none
    with both deleted first; this project's own runs (`benchmarks/bench_ddp.py exit-loop`,
    benchmarks/README.md) did not reproduce the abort either way, so the cleanup is a
    precaution, not a measured fix. An exception's traceback keeps the frames that hold them
    alive, so those frames are cleared before the group is destroyed.
    """
    if not world.distributed:
        yield
        return
    import torch.distributed as dist

    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend_for(device), timeout=timedelta(seconds=timeout_s), **kwargs)
    log.info("rank %d of %d (local rank %d) joined the %s process group", world.rank, world.size,
             world.local_rank, backend_for(device))
    try:
        yield
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        teardown()


def teardown() -> None:
    """Free what still refers to the group (DDP reducers, optimizers), then destroy it."""
    import torch.distributed as dist

    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, world: World, device: torch.device,
         sync_batchnorm: bool = True) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``model`` (SyncBatchNorm first: ``with_batchnorm``);
    the model itself in one process. DDP broadcasts rank 0's weights and buffers on entry."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    model = with_batchnorm(model, device, sync_batchnorm)
    if device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(model)


def with_batchnorm(model: torch.nn.Module, device: torch.device, sync: bool) -> torch.nn.Module:
    """``train.sync_batchnorm``: BatchNorm over the global batch (``torch.nn.SyncBatchNorm``,
    which torch runs only on GPUs) or over each process's slice (CPU processes always)."""
    if sync and device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def per_rank_batch(batch_size: int, world: World, scale_batch: bool) -> int:
    """Images per rank per step: ``batch_size / world`` (global batch unchanged) or
    ``batch_size`` (global batch scaled by the world size)."""
    if scale_batch or not world.distributed:
        return batch_size
    if batch_size % world.size:
        raise ConfigError(f"train.batch_size={batch_size} does not divide by the {world.size} training processes; "
                          "pick a multiple of WORLD_SIZE, or distributed.scale_batch: true")
    per_rank = batch_size // world.size
    if per_rank < 2:
        raise ConfigError(f"train.batch_size={batch_size} over {world.size} processes leaves {per_rank} image per "
                          "process: BatchNorm cannot train on one; raise train.batch_size")
    return per_rank


def learning_rate(base: float, world: World, scale_batch: bool) -> float:
    """The linear scaling rule when the global batch grows with the world size."""
    return base * world.size if scale_batch else base


def rank_slices(n: int, per_rank: int, world: World) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of this rank's slice of every full global batch of ``n`` items in
    epoch order (``per_rank * world.size`` items each); the last partial global batch is
    dropped, so every rank runs the same number of steps and each step has the same shape."""
    global_batch = per_rank * world.size
    for start in range(0, n - global_batch + 1, global_batch):
        first = start + world.rank * per_rank
        yield first, first + per_rank


def rank_batches(order: torch.Tensor, per_rank: int, world: World) -> Iterator[torch.Tensor]:
    """This rank's slice of every full global batch of ``order`` (``rank_slices``)."""
    for start, stop in rank_slices(len(order), per_rank, world):
        yield order[start:stop]


def epoch_batches(train_set, order: torch.Tensor, per_rank: int, world: World, aug_cfg,
                  generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """What one epoch of training feeds this rank, step by step: its slice of each full global
    batch of ``order`` (``rank_slices``) as float [0, 1] images and labels, augmented online
    when ``aug_cfg`` is given. The online augmentation draws the global batch's parameters and
    keeps this rank's slice of them (``augmentation.online_batch(part=...)``): the ranks'
    slices together are exactly the batch one process would train on, augmentation included.
    ``train_set`` is a ``train.TensorSet`` or an ``augmentation.PaperSet`` (planned here in
    per-rank batches: each rank's slice is one)."""
    from gistnet.data import augmentation

    train_set.prepare(order, per_rank)
    for start, stop in rank_slices(len(order), per_rank, world):
        x, y = train_set.batch(start, stop)
        if aug_cfg is not None:
            x = augmentation.online_batch(x, aug_cfg, generator, part=(world.rank, world.size))
        yield x, y


def sum_and_stop(totals: torch.Tensor, stop: bool, world: World) -> tuple[torch.Tensor, bool]:
    """One collective per epoch: sum the epoch's counters over the ranks and learn whether
    any rank was asked to stop (SIGTERM), so every rank stops at the same epoch boundary."""
    if not world.distributed:
        return totals, stop
    import torch.distributed as dist

    packed = torch.cat([totals.detach().double().flatten(),
                        torch.tensor([1.0 if stop else 0.0], dtype=torch.float64, device=totals.device)])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return packed[:-1].view_as(totals).to(totals.dtype), bool(packed[-1].item() > 0)


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """Whether ``flag`` is set on any rank (every rank must call it at the same point)."""
    if not world.distributed:
        return flag
    return sum_and_stop(torch.zeros(0, device=device), flag, world)[1]


def broadcast(value, world: World):
    """Rank 0's ``value`` (any picklable object) on every rank; every rank must call it at the
    same point. ``value`` itself in one process."""
    if not world.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    """Wait until every rank got here (rank 0 wrote what the others read next)."""
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def metrics_port(base: int, world: World) -> int:
    """``base + LOCAL_RANK``: the processes of one node each get their own port."""
    return base + world.local_rank if base else 0


def wait_for_master(addr: str, port: int, timeout_s: float, connect: bool = True, interval_s: float = 1.0,
                    clock=time.monotonic, sleep=time.sleep) -> float:
    """Wait until ``addr`` resolves and (with ``connect``) ``addr:port`` accepts a TCP
    connection; return the seconds waited. ``torchrun``'s TCPStore retries a refused
    connection but not a failed DNS lookup, and a Job's pod names appear in DNS only once
    the pods run, so a worker node started before the master would fail at once."""
    started = clock()
    last_error = "not tried"
    while True:
        try:
            infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)
            if not connect:
                return clock() - started
            for family, kind, proto, _, address in infos:
                with socket.socket(family, kind, proto) as s:
                    s.settimeout(max(interval_s, 1.0))
                    try:
                        s.connect(address)
                        return clock() - started
                    except OSError as exc:
                        last_error = f"{address}: {exc.strerror or exc}"
        except socket.gaierror as exc:
            last_error = f"DNS: {exc.strerror or exc}"
        if clock() - started >= timeout_s:
            raise ConfigError(f"master {addr}:{port} not reachable after {timeout_s:.0f}s ({last_error}); "
                              "is the master pod running, and the headless Service in place?")
        sleep(interval_s)


def launch(command: list[str], master_wait_s: float, environ: Mapping[str, str] | None = None) -> int:
    """``torchrun -m gistnet COMMAND...`` configured by its ``PET_*`` variables (what the
    chart's Indexed Job and Kubeflow Trainer set), after a bounded wait for the master.

    Returns the exit code of the first process that failed (by time), so the chart's
    podFailurePolicy still reads gistnet's exit codes: ``torchrun`` itself exits 1 for any
    failure. A process killed by a signal gives 128 + the signal's number, like a shell.
    SIGTERM or SIGINT to the launcher itself is forwarded to the training processes
    (``launcher.SignalForwarder``): after SIGTERM they checkpoint and exit 8, after SIGINT they
    stop at once without a checkpoint and exit 130; and so does it.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from gistnet.errors import EXIT_CTRL_C, EXIT_INTERRUPTED
    from gistnet.training import launcher

    environ = os.environ if environ is None else environ
    args = get_args_parser().parse_args(["--signals-to-handle", launcher.TORCHRUN_SIGNALS, "--module", "gistnet",
                                         *command])
    forwarder = launcher.SignalForwarder(launcher.grace_seconds(environ))
    with forwarder.installed():
        try:
            forwarder.raise_if_signalled_while_starting()
            _wait_for_the_master(environ, master_wait_s)
            run(args)
        except launcher.SignalledBeforeStart as exc:
            log.warning("received %s before any training process ran; nothing to checkpoint", forwarder.name)
            return EXIT_CTRL_C if exc.signum == signal.SIGINT else EXIT_INTERRUPTED
        except ChildFailedError as exc:
            rank, failure = exc.get_first_failure()
            code = launcher.exit_code(failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode,
                                      forwarder.signum)
            if forwarder.signum and code in (EXIT_INTERRUPTED, EXIT_CTRL_C):
                pass  # stopped as the launcher asked: rank 0's one line said it
            elif code == EXIT_INTERRUPTED:  # a worker itself was sent SIGTERM (its node drained, say)
                log.warning("training process of rank %d exited %d first (interrupted by SIGTERM; every rank "
                            "stopped after the same epoch and the checkpoint is saved): re-run to resume", rank, code)
            else:
                log.error("training process of rank %d failed first (exit code %d)", rank, code)
            return code
    return 0


def _wait_for_the_master(environ: Mapping[str, str], master_wait_s: float) -> None:
    nodes = environ.get("PET_NNODES", "1")
    addr = environ.get("PET_MASTER_ADDR", "")
    if addr and nodes not in ("1", "1:1"):
        port = _int_env(environ, "PET_MASTER_PORT", 29500)
        node_rank = _int_env(environ, "PET_NODE_RANK", 0)
        waited = wait_for_master(addr, port, master_wait_s, connect=node_rank != 0)
        log.info("node %d: master %s:%d reachable after %.1fs", node_rank, addr, port, waited)
