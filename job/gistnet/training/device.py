"""The device a run trains on: which one, how deterministic, its RNG state, and what running
out of its memory means for the user."""

from __future__ import annotations

import contextlib
import os

import torch

from gistnet.errors import DeviceError, OutOfDeviceMemory


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was requested but no CUDA GPU is visible (torch.cuda.is_available() is False)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    if deterministic and device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        # On the GPU we prefer speed; bf16 autocast already makes bitwise reproducibility moot.
        torch.backends.cudnn.benchmark = True


def cuda_rng_state(device: torch.device) -> torch.Tensor | None:
    """The training GPU's RNG state; None off CUDA (CUDA is never initialised for a CPU run)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_rng_state(device)


def restore_cuda_rng_state(saved, device: torch.device) -> None:
    """Restore the training GPU's RNG state. Older checkpoints hold a list, one state per
    visible GPU: the training device's entry is used (the first if it has no entry), so a
    run resumes on a node with fewer GPUs. Off CUDA, nothing is touched."""
    if device.type != "cuda" or saved is None:
        return
    if isinstance(saved, (list, tuple)):
        if not saved:
            return
        index = device.index if device.index is not None else torch.cuda.current_device()
        saved = saved[index] if index < len(saved) else saved[0]
    torch.cuda.set_rng_state(saved, device)


@contextlib.contextmanager
def out_of_memory_is_a_device_error(stage: str, batch_size: int, image_size: int):
    """``torch.OutOfMemoryError`` -> exit 6 with the keys to lower: a retry of the same Job
    would download and expand the data again only to hit the same wall."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else "torch.OutOfMemoryError"
        raise OutOfDeviceMemory(f"{stage}: out of device memory with train.batch_size={batch_size} and "
                                f"data.image_size={image_size}; lower train.batch_size or data.image_size, "
                                f"or use a device with more memory ({first})") from None


def threads_hint() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads()
