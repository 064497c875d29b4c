"""What every process of a run shares: its rank, the barrier, the reductions ranks agree through, its device's memory.

One home for them so the trainer, checkpointing and validation ask the same question the same way: a single
process (no process group) is rank 0 of 1 and every collective is a no-op, so callers never branch on it.
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether a process group is up (torchrun/deepspeed after ``TrainingArguments`` initialised it)."""
    return dist.is_available() and dist.is_initialized()


def world() -> tuple[int, int]:
    """(rank, world size): the process group's, or, before it exists, what torchrun / the deepspeed launcher
    announce."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return world()[0] == 0


def barrier() -> None:
    """Wait for every rank (nothing to wait for without a process group)."""
    if is_distributed():
        dist.barrier()


def from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object; ``value`` itself without a process group)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def collective_device() -> str:
    """Where tensors for a collective must live: NCCL only reduces GPU tensors, gloo CPU ones."""
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over every rank (a copy; on the tensor's own device again)."""
    if not is_distributed():
        return values.clone()
    reduced = values.to(collective_device())
    dist.all_reduce(reduced)
    return reduced.to(values.device)


def count_over_ranks(value: int) -> int:
    """An integer count summed over every rank."""
    return int(sum_over_ranks(torch.tensor([value], dtype=torch.long)).item())


def gather_over_ranks(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (picklable objects; ``[value]`` alone)."""
    if not is_distributed():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one; ranks must agree on stopping or they deadlock."""
    if not is_distributed():
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank (the non-finite-loss guard: all ranks stop together)."""
    bad = not bool(torch.isfinite(loss.detach()).all())
    return not any_rank(bad)


def peak_memory_gb(device: str) -> float:
    """Peak accelerator memory since the last reset; on CPU the process's peak resident set (never resets)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e9
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9
