"""Data-parallel products over torch.distributed (gloo on CPU) equal one process on all the data.

Each test module spawns its process groups once (module fixtures): every rank builds the operators
on its own, uneven, shard and saves what it computed; the test compares, in float64, with one
process over the concatenated shards. The failure scenarios run one after the other in one group,
each rank recording the error it got; every spawn is joined with a timeout, so a hang fails the
test instead of blocking the suite.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import numpy
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from curvkit import (
    EFLinearOperator,
    EKFACLinearOperator,
    FisherMCLinearOperator,
    GGNLinearOperator,
    HessianLinearOperator,
    JacobianLinearOperator,
    KFACLinearOperator,
    ggn_diagonal,
)
from curvkit._engine.reduction import PACK_LIMIT
from curvkit.linalg import hutchinson_trace, lanczos_eigsh
from curvkit.sketch import seigh

BATCH_SIZES = (3, 4, 2, 5, 3)
SHARDS = {2: ([0, 1], [2, 3, 4]), 3: ([0], [1, 2], [3, 4])}
"""Batches of each rank, by world size: uneven, contiguous (rank order is data order)."""
OPERATORS = {
    "Hessian": (HessianLinearOperator, {}),
    "GGN": (GGNLinearOperator, {}),
    "EF": (EFLinearOperator, {}),
    "MC-Fisher": (FisherMCLinearOperator, {"seed": 3, "mc_samples": 2}),
}
TIMEOUT = 120.0
"""Seconds a spawned group may take (start-up of the processes included)."""
GROUP_TIMEOUT = timedelta(seconds=20)
"""The process group's own timeout: how long a rank waits for one that never arrives."""


def _problem(hidden: int = 5):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 3)).double()
    batches = [
        (torch.randn(size, 4, dtype=torch.float64), torch.randint(0, 3, (size,))) for size in BATCH_SIZES
    ]
    return model, nn.CrossEntropyLoss(), list(model.parameters()), batches


def _vectors(dim: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    V = torch.randn(dim, 3, generator=generator, dtype=torch.float64)
    W = torch.randn(rows, 2, generator=generator, dtype=torch.float64)
    return V, W


def _compute(data: list, process_group: object | None) -> dict[str, torch.Tensor]:
    """Every product and estimate of the tests on ``data`` (a shard, or all batches)."""
    model, loss_func, params, _ = _problem()
    results = {}
    for name, (cls, kwargs) in OPERATORS.items():
        operator = cls(model, loss_func, params, data, process_group=process_group, **kwargs)
        V, _ = _vectors(operator.shape[0], 1)
        results[name] = operator @ V
        results[f"{name}, one vector"] = operator @ V[:, 0]
        results["num_data"] = torch.tensor(operator.num_data)
    jacobian = JacobianLinearOperator(model, params, data, process_group=process_group)
    V, W = _vectors(jacobian.shape[1], jacobian.shape[0])
    results["J V"] = jacobian @ V
    results["Jᵀ W"] = jacobian.T @ W
    for mode in ("exact", "mc"):
        results[f"ggn_diagonal {mode}"] = ggn_diagonal(
            model, loss_func, params, data, mode=mode, seed=4, process_group=process_group
        )
    ggn = GGNLinearOperator(model, loss_func, params, data, process_group=process_group)
    hessian = HessianLinearOperator(model, loss_func, params, data, process_group=process_group)
    gradient, results["loss"] = ggn.gradient_and_loss()
    results["gradient"] = torch.cat([g.flatten() for g in gradient])
    results["trace"] = hutchinson_trace(ggn, 5, seed=0)
    results["top eigenvalues"] = lanczos_eigsh(hessian, k=2, seed=0)[0]
    results["seigh"] = seigh(ggn, ggn.device, ggn.dtype, 6, seed=0)[0]
    results["dense GGN"] = ggn.to_dense()
    for fisher_type in ("type-2", "mc", "empirical"):
        kfac = KFACLinearOperator(
            model, loss_func, params, data, fisher_type=fisher_type, seed=5, process_group=process_group
        )
        results[f"KFAC {fisher_type}"] = kfac.to_dense()
    bounds = [bound for block in kfac.factored.blocks for bound in (block.output_rank, block.input_rank)]
    results["KFAC rank bounds"] = torch.tensor([-1 if b is None else b for b in bounds], dtype=torch.float64)
    ekfac = EKFACLinearOperator(
        model, loss_func, params, data, fisher_type="empirical", process_group=process_group
    )
    results["EKFAC"] = ekfac.to_dense()
    # half precision: every rank sums in float32, so the all-reduce adds tensors of one dtype
    half = model.to(torch.bfloat16)
    half_data = [(X.to(torch.bfloat16), y) for X, y in data]
    half_params = list(half.parameters())
    ggn = GGNLinearOperator(half, loss_func, half_params, half_data, process_group=process_group)
    results["GGN, bfloat16"] = ggn @ _vectors(ggn.shape[0], 1)[0].to(torch.bfloat16)
    kfac = KFACLinearOperator(
        half, loss_func, half_params, half_data, fisher_type="type-2", process_group=process_group
    )
    results["KFAC type-2, bfloat16"] = kfac.to_dense()
    return results


def _products(rank: int, world_size: int) -> dict:
    model, loss_func, params, batches = _problem()
    shard = [batches[index] for index in SHARDS[world_size][rank]]
    results = _compute(shard, dist.group.WORLD)
    wrapped = DistributedDataParallel(model)
    ggn = GGNLinearOperator(wrapped, loss_func, params, shard, process_group=dist.group.WORLD)
    results["GGN, DDP-wrapped model"] = ggn @ _vectors(ggn.shape[0], 1)[0]
    # budgets that allow different block widths per rank: the ranks must agree on one
    ggn.memory_budget = 1 if rank == 0 else 2**30
    results["dense GGN, memory budget"] = ggn.to_dense()
    # one tensor above the packing limit (reduced on its own, a non-contiguous view) and two below
    large = torch.full((PACK_LIMIT + 2, 2), float(rank + 1), dtype=torch.float64)[:, 0]
    small = [torch.full((3,), 10.0 * (rank + 1)), torch.full((2, 2), -float(rank))]
    ggn._setup.reduction.all_reduce([small[0], large, small[1]])
    results["all-reduced pieces"] = [large[:4].clone(), float(large.sum()), *small]
    return results


class _FailingData(list):
    """Batches that fail half-way through a pass once ``failing`` is set."""

    failing = False

    def __iter__(self):
        for index, batch in enumerate(super().__iter__()):
            if self.failing and index == 1:
                raise OSError("the shard's file went missing")
            yield batch


def _raise_during_a_pass(rank, model, loss_func, params, shard) -> None:
    data = _FailingData(shard)
    operator = GGNLinearOperator(model, loss_func, params, data, process_group=dist.group.WORLD)
    data.failing = rank == 1
    operator.to_dense()


def _failures(rank: int, world_size: int) -> dict:
    """Every failure scenario, in order; per scenario the error this rank got and how long it took."""
    model, loss_func, params, batches = _problem()
    shard = [batches[index] for index in SHARDS[world_size][rank]]
    group = dist.group.WORLD
    other_model = _problem(hidden=6 if rank == 1 else 5)[0]
    scenarios = {
        "operator type": lambda: (GGNLinearOperator if rank == 0 else HessianLinearOperator)(
            model, loss_func, params, shard, process_group=group
        ),
        "fisher_type": lambda: (GGNLinearOperator if rank == 0 else EFLinearOperator)(
            model, loss_func, params, shard, process_group=group
        ),
        "parameter shapes": lambda: GGNLinearOperator(
            other_model, loss_func, list(other_model.parameters()), shard, process_group=group
        ),
        "empty shard": lambda: GGNLinearOperator(
            model, loss_func, params, [] if rank == 1 else shard, process_group=group
        ),
        "num_data": lambda: GGNLinearOperator(
            model, loss_func, params, shard, num_data=99, process_group=group
        ),
        "raises during a pass": lambda: _raise_during_a_pass(rank, model, loss_func, params, shard),
        "different random vectors": lambda: (
            numpy.random.seed(rank),
            lanczos_eigsh(GGNLinearOperator(model, loss_func, params, shard, process_group=group), k=1),
        ),
        # last: the group is gone afterwards
        "rank leaves": lambda: _leave_or_multiply(rank, model, loss_func, params, shard),
    }
    outcome = {}
    for name, scenario in scenarios.items():
        start = time.monotonic()
        try:
            scenario()
            outcome[name] = (None, time.monotonic() - start)
        except Exception as error:
            outcome[name] = (f"{type(error).__name__}: {error}", time.monotonic() - start)
        if name != "rank leaves":
            dist.barrier()
    return outcome


def _leave_or_multiply(rank: int, model, loss_func, params, shard) -> None:
    operator = GGNLinearOperator(model, loss_func, params, shard, process_group=dist.group.WORLD)
    if rank == 1:
        raise RuntimeError("rank 1 leaves without multiplying")
    operator @ torch.ones(operator.shape[1], dtype=torch.float64)


def _worker(rank: int, world_size: int, port: int, task: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size, timeout=GROUP_TIMEOUT
    )
    try:
        result = {"products": _products, "failures": _failures}[task](rank, world_size)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        if task != "failures":
            dist.barrier()  # no rank tears down the group while another still uses it
            dist.destroy_process_group()
    if task == "failures":
        # the last scenario broke the group on purpose (a rank left): tearing it down at exit
        # may find gloo's threads mid-collective and abort ("terminate called without an
        # active exception"), which would fail the spawn after the results are saved
        os._exit(0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(world_size: int, task: str, out: Path) -> list[dict]:
    """Run ``task`` on ``world_size`` ranks; their results; fail (not hang) after :data:`TIMEOUT`."""
    context = mp.start_processes(
        _worker,
        (world_size, _free_port(), task, str(out)),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + TIMEOUT
    while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{task} on {world_size} ranks did not finish within {TIMEOUT} s (a hang)")
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]


@pytest.fixture(scope="module")
def one_process() -> dict:
    return _compute(_problem()[3], None)


@pytest.fixture(scope="module", params=[2, 3], ids=["2 ranks", "3 ranks"])
def ranks(request, tmp_path_factory) -> list[dict]:
    return _spawn(request.param, "products", tmp_path_factory.mktemp(f"ranks{request.param}"))


QUANTITIES = [
    *OPERATORS,
    *(f"{name}, one vector" for name in OPERATORS),
    "num_data",
    "J V",
    "Jᵀ W",
    "ggn_diagonal exact",
    "ggn_diagonal mc",
    "loss",
    "gradient",
    "trace",
    "top eigenvalues",
    "seigh",
    "GGN, DDP-wrapped model",
    "dense GGN, memory budget",
    "KFAC type-2",
    "KFAC mc",
    "KFAC empirical",
    "KFAC rank bounds",
    "EKFAC",
    "GGN, bfloat16",
    "KFAC type-2, bfloat16",
]
SAME_AS = {"GGN, DDP-wrapped model": "GGN", "dense GGN, memory budget": "dense GGN"}
"""Quantities computed otherwise in one process."""


@pytest.mark.parametrize("quantity", QUANTITIES)
def test_every_rank_gets_what_one_process_gets_on_all_data(ranks, one_process, quantity):
    expected = one_process[SAME_AS.get(quantity, quantity)]
    for rank, results in enumerate(ranks):
        assert results[quantity].shape == expected.shape, f"rank {rank}"
        # bfloat16: rounded once from float32 sums added in another order (torch's bfloat16 tolerance)
        tolerance = {} if expected.dtype == torch.bfloat16 else {"rtol": 1e-10, "atol": 1e-12}
        torch.testing.assert_close(results[quantity], expected, **tolerance, msg=f"rank {rank}")


def test_all_reduce_sums_packed_and_large_tensors_in_place(ranks):
    world_size = len(ranks)
    rank_sum = world_size * (world_size + 1) / 2  # Σ_r (r + 1)
    for results in ranks:
        large_head, large_sum, small_vector, small_matrix = results["all-reduced pieces"]
        assert torch.equal(large_head, torch.full((4,), rank_sum, dtype=torch.float64))
        assert large_sum == rank_sum * (PACK_LIMIT + 2)
        assert torch.equal(small_vector, torch.full((3,), 10.0 * rank_sum))
        assert torch.equal(small_matrix, torch.full((2, 2), -(rank_sum - world_size)))


@pytest.fixture(scope="module")
def failures(tmp_path_factory) -> list[dict]:
    return _spawn(2, "failures", tmp_path_factory.mktemp("failures"))


@pytest.mark.parametrize(
    "scenario, expected",
    [
        ("operator type", "rank 1: HessianLinearOperator"),
        ("fisher_type", "rank 1: EFLinearOperator, fisher_type empirical"),
        (
            "parameter shapes",
            "torch.float64; parameters [(6, 4), (6,), (3, 6), (3,)]",
        ),
        ("empty shard", "data is empty on rank 1"),
        ("num_data", "num_data is 99"),
        ("raises during a pass", "the shard's file went missing"),
        ("different random vectors", "multiply different vectors"),
    ],
)
def test_a_failure_on_one_rank_raises_on_every_rank(failures, scenario, expected):
    for rank, outcome in enumerate(failures):
        error, seconds = outcome[scenario]
        assert error is not None, f"rank {rank} did not raise"
        assert expected in error, f"rank {rank}: {error}"
        assert seconds < GROUP_TIMEOUT.total_seconds(), f"rank {rank} waited {seconds:.0f} s"


def test_a_rank_that_leaves_makes_the_others_raise_within_the_timeout(failures):
    error, seconds = failures[0]["rank leaves"]
    assert error is not None
    assert seconds < GROUP_TIMEOUT.total_seconds() + 10
