"""Distributed data parallel set-up for ``torchrun``.

``torchrun --nproc_per_node N -m convattn train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` reads them and
starts a process group (``gloo`` on CPU, ``nccl`` on CUDA). Without them it is a
no-op and the run is a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..exceptions import ConfigError

__all__ = [
    "DistContext", "setup", "cleanup", "resolve_device", "all_reduce_sum", "all_reduce_eval", "broadcast_buffers",
    "broadcast_path", "gather_objects",
]


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, its device, whether it logs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU raises ConfigError."""
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch.cuda.is_available() is false; use --device cpu")
    if pref in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def setup(device: str = "auto") -> DistContext:
    """Start the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    initialized_here = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        initialized_here = True
    return DistContext(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=dev,
        initialized_here=initialized_here,
    )


def cleanup(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(ctx: DistContext, values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (float64), identity on a single process."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_eval(ctx: DistContext, loss_sum: float, confusion: torch.Tensor,
                    device: torch.device) -> tuple[float, torch.Tensor]:
    """An evaluation's loss sum and confusion matrix summed over all ranks, identity on a single process."""
    if not ctx.enabled:
        return loss_sum, confusion
    t = torch.cat([torch.tensor([loss_sum], dtype=torch.float64), confusion.double().flatten()]).to(device)
    dist.all_reduce(t)
    t = t.cpu()
    return float(t[0]), t[1:].round().long().view_as(confusion)


def broadcast_path(ctx: DistContext, path: Path) -> Path:
    """Rank 0's ``path`` on every rank (a run directory named by the time it starts)."""
    if not ctx.enabled:
        return path
    holder = [str(path)]
    dist.broadcast_object_list(holder, src=0)
    return Path(holder[0])


def gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` on a single process."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(ctx: DistContext, module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank; DDP keeps the parameters in sync."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for t in module.buffers():
            dist.broadcast(t.data, src=0)
