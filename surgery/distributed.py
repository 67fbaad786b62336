"""Several processes (``torchrun``, PyTorch's Distributed Data Parallel launcher): joining the
process group torchrun describes, the rank and world size, and combining per-image results.

``finetune`` and ``evaluate`` run in every process; with a process group initialised (or
launched by torchrun: the group is then joined for the call and left afterwards, as
Lightning and Accelerate do) they split the work over the ranks.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

__all__ = ["joins_torchrun", "rank", "world_size", "sum_over_ranks", "broadcast_from_first", "check_same_on_every_rank"]

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
Run = TypeVar("Run", bound=Callable)


def initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if initialised() else 0


def world_size() -> int:
    return dist.get_world_size() if initialised() else 1


def launched_by_torchrun() -> bool:
    """Started by torchrun with more than one process (its environment variables are set)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES) and int(os.environ["WORLD_SIZE"]) > 1


def joins_torchrun(device_of: Callable[..., torch.device]) -> Callable[[Run], Run]:
    """Under torchrun with no process group yet, join the one its environment describes for the
    call (gloo on the CPU, NCCL on CUDA) and leave it afterwards: without it every rank would do
    the whole job alone. ``device_of(*args, **kwargs)`` is the device the call runs on; a CUDA
    call runs on ``cuda:LOCAL_RANK`` (set as the current device)."""

    def decorate(run: Run) -> Run:
        @functools.wraps(run)
        def wrapper(*args, **kwargs):
            if not launched_by_torchrun() or not dist.is_available() or dist.is_initialized():
                return run(*args, **kwargs)
            cuda = device_of(*args, **kwargs).type == "cuda"
            if cuda:
                torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
            dist.init_process_group("nccl" if cuda else "gloo")
            try:
                return run(*args, **kwargs)
            finally:
                dist.destroy_process_group()

        return wrapper  # type: ignore[return-value]

    return decorate


def _backend_device() -> torch.device:
    """Where collective tensors must live: the current CUDA device for NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over every rank (the tensor itself in one process), on the CPU."""
    if not initialised():
        return tensor
    total = tensor.to(_backend_device()).clone()
    dist.all_reduce(total)
    return total.cpu()


def broadcast_from_first(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``tensor`` on every rank (same shape and dtype everywhere), on the CPU."""
    if not initialised():
        return tensor
    shared = tensor.to(_backend_device()).contiguous().clone()
    dist.broadcast(shared, 0)
    return shared.cpu()


def check_same_on_every_rank(value: Callable[[], str], what: str, fix: str) -> None:
    """Raise on every rank when ``value()`` (e.g. a digest of the model's weights; computed only
    under a process group) differs between ranks: results combined from different ``what``
    would be silently wrong."""
    if not initialised():
        return
    values = [None] * world_size()
    dist.all_gather_object(values, value())
    differing = [r for r, v in enumerate(values) if v != values[0]]
    if differing:
        raise ValueError(f"{what} differs between ranks (ranks {differing} are not rank 0's): {fix}")
