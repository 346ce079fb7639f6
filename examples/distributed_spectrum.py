"""The spectrum of an MLP's Hessian over data sharded across processes (``torch.distributed``).

Run it on two processes, each iterating half of the mini-batches::

    torchrun --nproc_per_node=2 examples/distributed_spectrum.py

or alone (``python examples/distributed_spectrum.py``): it prints the same numbers. Each rank
builds the Hessian on its own shard with ``process_group=torch.distributed.group.WORLD``; every
product is summed over the ranks, so the linear algebra (Lanczos, Hutch++) runs alike on every rank,
with random vectors drawn from the same seeds, and rank 0 prints. See docs/distributed.md.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from curvkit import HessianLinearOperator
from curvkit.linalg import hutchpp_trace, lanczos_approximate_spectrum, lanczos_eigsh

NUM_BATCHES, BATCH_SIZE = 6, 50


def data_and_model() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A small MLP and 300 samples of a synthetic 3-class problem, the same on every rank."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3)).double()
    X = torch.randn(NUM_BATCHES * BATCH_SIZE, 10, dtype=torch.float64)
    y = (X[:, :3] + 0.5 * torch.randn(X.shape[0], 3, dtype=torch.float64)).argmax(dim=1)
    batches = list(zip(X.split(BATCH_SIZE), y.split(BATCH_SIZE)))
    return model, batches


def main() -> None:
    """Build the Hessian on this rank's shard; print its top eigenvalues, trace, density (rank 0)."""
    launched = "WORLD_SIZE" in os.environ  # set by torchrun
    if launched:
        dist.init_process_group("gloo", timeout=timedelta(seconds=60))
        rank, world_size, group = dist.get_rank(), dist.get_world_size(), dist.group.WORLD
    else:
        rank, world_size, group = 0, 1, None
    model, batches = data_and_model()
    shard = batches[rank::world_size]  # as DistributedSampler deals them out, here by batch

    hessian = HessianLinearOperator(
        model, nn.CrossEntropyLoss(), list(model.parameters()), shard, process_group=group
    )
    eigenvalues, _ = lanczos_eigsh(hessian, k=3, seed=0)
    trace = hutchpp_trace(hessian, 60, seed=0)
    grid, density = lanczos_approximate_spectrum(hessian, ncv=30, num_points=5, seed=0)
    if rank == 0:
        print(f"processes: {world_size}, samples: {hessian.num_data}, parameters: {hessian.shape[0]}")
        print("top eigenvalues:", " ".join(f"{value:.6e}" for value in eigenvalues.tolist()))
        print(f"Hutch++ trace estimate: {float(trace):.6e}")
        print("spectral density:", " ".join(f"{x:.4e}:{p:.4e}" for x, p in zip(grid, density)))
    if launched:
        dist.barrier()  # no rank tears down the group while another still uses it
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
