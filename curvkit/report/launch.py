"""``curvkit report`` under ``torchrun``: one process group, data sharded, rank 0 writes.

Launched by ``torchrun --nproc_per_node=P -m curvkit report ...`` (``WORLD_SIZE > 1`` in the
environment), every rank loads the same problem, takes every ``P``-th batch and builds its
operators with the process group (docs/distributed.md), so that every product, and with it
every analysis, is that of all the data; only rank 0 writes the page, the metrics and the
figures.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from curvkit.report.problem import Problem, batch_size

TIMEOUT = timedelta(minutes=10)
"""How long a rank waits for the others in a collective before it raises."""


def launched() -> bool:
    """Whether this process is one of several that ``torchrun`` started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    """This process's rank, as ``torchrun`` sets it (0 when not launched by it)."""
    return int(os.environ.get("RANK", "0"))


def join_process_group(device: str | None) -> bool:
    """Initialize the default process group from ``torchrun``'s environment, unless it is already.

    NCCL for CUDA devices (each rank on its local GPU), gloo otherwise.

    Returns:
        Whether this call initialized it (and the caller should destroy it at the end).
    """
    if dist.is_initialized():
        return False
    cuda = device is not None and device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return True


def sharded(problem: Problem) -> Problem:
    """The problem with this rank's shard of the batches, rank 0's parameters and the group.

    The parameters and buffers are broadcast from rank 0, so that a model trained on each rank
    (the built-in ones) is the same bit for bit everywhere.
    """
    group = dist.group.WORLD
    with torch.no_grad():
        for tensor in [*problem.model.parameters(), *problem.model.buffers()]:
            dist.broadcast(tensor, src=0, group=group)
    world, this_rank = dist.get_world_size(group), dist.get_rank(group)
    shard = problem.data[this_rank::world]
    device = problem.device if dist.get_backend(group) == "nccl" else torch.device("cpu")
    counts = torch.tensor([sum(batch_size(X) for X, _ in shard), len(shard)], device=device)
    dist.all_reduce(counts, group=group)
    return dataclasses.replace(problem, data=shard, process_group=group, totals=tuple(counts.tolist()))


def all_reduced(tensors: list[torch.Tensor], process_group: Any) -> None:
    """Sum ``tensors`` over the ranks of ``process_group`` in place (nothing for ``None``)."""
    if process_group is None:
        return
    for tensor in tensors:
        dist.all_reduce(tensor, group=process_group)
