"""torchrun / DistributedDataParallel plumbing: one process group, rank-0-only side effects.

``torchrun --nproc_per_node=N -m flowvae train ...`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``;
:func:`setup` reads them and joins the group (gloo on CPU, nccl on GPU). Without them every
helper here is a no-op, so single-process code paths are the same code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device: torch.device) -> Dist:
    """Join the process group torchrun describes (if any); returns this process's place in it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return Dist(rank, world, local_rank)


def local_device(device: torch.device, d: Dist) -> torch.device:
    """Each process drives its own GPU: cuda:LOCAL_RANK."""
    return torch.device("cuda", d.local_rank) if device.type == "cuda" and d.enabled else device


def all_gather(obj: Any, d: Dist) -> list[Any]:
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], d: Dist, device: torch.device) -> list[float]:
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any: keeps stop decisions in lockstep."""
    return bool(all_reduce_sum([float(flag)], d, device)[0]) if d.enabled else flag


def barrier(d: Dist) -> None:
    """Wait until every process gets here (no-op in one process)."""
    if d.enabled and dist.is_initialized():
        dist.barrier()


def cleanup(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
