"""Process-group setup for DistributedDataParallel under torchrun, and a few collectives.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in
each worker. Without them the trainer runs as one process and every helper
here does nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, which logs, saves the adapter and pushes."""
        return self.rank == 0


def current_rank() -> int:
    """Return this process's global rank as torchrun set it, 0 outside torchrun."""
    return int(os.environ.get("RANK", "0"))


@contextmanager
def distributed_context() -> Iterator[DistributedContext]:
    """Join the torchrun process group when WORLD_SIZE > 1; leave it on exit.

    The backend is nccl when CUDA is available (one GPU per local rank) and
    gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(local_rank)
    if world_size <= 1:
        yield DistributedContext(rank=0, local_rank=0, world_size=1, device=device)
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    logger.info("joined process group: rank %d of %d, backend %s", rank, world_size, backend)
    try:
        yield DistributedContext(
            rank=rank, local_rank=local_rank, world_size=world_size, device=device
        )
    finally:
        dist.destroy_process_group()


def _device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


@contextmanager
def main_process_first(context: DistributedContext) -> Iterator[None]:
    """Run the block on rank 0 before the other ranks, e.g. to fill a download cache once."""
    if context.enabled and not context.is_main:
        dist.barrier()
    try:
        yield
    finally:
        if context.enabled and context.is_main:
            dist.barrier()


def any_rank(context: DistributedContext, flag: bool) -> bool:
    """Return whether ``flag`` is true on at least one rank (a collective on every rank)."""
    if not context.enabled:
        return flag
    value = torch.tensor([1 if flag else 0], device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def sum_over_ranks(context: DistributedContext, *values: float) -> list[float]:
    """Return each value summed over all ranks (a collective on every rank)."""
    if not context.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.tolist()]


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()
