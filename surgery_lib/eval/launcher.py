"""The ``torchrun`` side of an evaluation run: process group set-up (gloo on CPU, nccl on GPU) and
barriers."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

# ---------------------------------------------------------------------------------------------------
# distributed helpers


def _init_distributed(device: str) -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``; starts a process group when launched by ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    dev = torch.device(f"cuda:{local}" if use_cuda and world > 1 else ("cuda" if use_cuda else "cpu"))
    if world > 1:
        if use_cuda:
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return dist.get_rank(), world, dev
    return 0, 1, dev


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()
