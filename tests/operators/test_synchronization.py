"""Products read nothing back from the device, so that a GPU never waits for the host.

On a GPU, every value the host reads from the device (``float(t)``, ``t.item()``, boolean-mask
indexing, ``torch.equal``) stalls the host until the device has caught up; in the kernel-launch
bound regime of small models, each such stall costs about as much as the work queued before it.
These checks run on the CPU: batches are copied when they "move to the device", as they are on
a GPU, and a dispatch mode records every operation that would read from the device, except
what is computed from the batches as ``data`` yields them, before they move (on the host, where
data usually is): counting a batch's loss terms on its targets, checking inputs and targets for
NaN.
"""

import pytest
import torch
from test_curvature import OPERATORS, build
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from zoo import make_problem_from_id

from curvkit import JacobianLinearOperator, TransposedJacobianLinearOperator, ggn_diagonal
from curvkit._engine import iteration

READS = {"_local_scalar_dense", "nonzero", "is_nonzero", "equal", "masked_select", "_unique2", "allclose"}


class DeviceReads(TorchDispatchMode):
    """Records the operations that read values from a device, except on host tensors.

    Host tensors: the ``host`` tensors (batches as ``data`` yields them) and what operations on
    host tensors alone compute from them, except ``clone``, which :func:`copies_on_transfer`
    makes the move to the device.
    """

    def __init__(self, host: list[torch.Tensor]):
        super().__init__()
        self.host, self.reads = list(host), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        tensors = [leaf for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)]
        on_host = bool(tensors) and all(any(t is host for host in self.host) for t in tensors)
        masked = name == "index" and any(
            isinstance(index, torch.Tensor) and index.dtype == torch.bool
            for index in args[1]
            if index is not None
        )
        if (name in READS or masked) and not on_host:
            self.reads.append(name)
        result = func(*args, **(kwargs or {}))
        if on_host and name != "clone":
            self.host += [leaf for leaf in tree_leaves(result) if isinstance(leaf, torch.Tensor)]
        return result


@pytest.fixture(autouse=True)
def copies_on_transfer(monkeypatch):
    """Moving a batch to the device makes new tensors, as on a GPU (on the CPU, ``.to`` is a no-op)."""
    move = iteration._to_device
    monkeypatch.setattr(
        iteration,
        "_to_device",
        lambda X, device: torch.utils._pytree.tree_map(
            lambda tensor: tensor.clone() if isinstance(tensor, torch.Tensor) else tensor, move(X, device)
        ),
    )


def _products(operator, dim: int) -> None:
    operator @ torch.randn(dim, dtype=operator.dtype)
    operator @ torch.randn(dim, 3, dtype=operator.dtype)


@pytest.mark.parametrize("problem_id", ["mlp-ce-mean-three-list", "transformer-ceseq-mean-three-list"])
@pytest.mark.parametrize("kind", [*sorted(OPERATORS), "jacobian", "transposed jacobian"])
def test_products_read_nothing_back(kind, problem_id):
    problem = make_problem_from_id(problem_id)
    if kind.endswith("jacobian"):
        cls = JacobianLinearOperator if kind == "jacobian" else TransposedJacobianLinearOperator
        operator = cls(problem.model, problem.params, problem.data)
    else:
        operator = build(kind, problem)
    _products(operator, operator.shape[1])  # warm up: forward-mode decompositions load once
    with DeviceReads(tree_leaves(problem.data)) as recorder:
        _products(operator, operator.shape[1])
    assert recorder.reads == []


def test_cached_products_read_once_per_pass():
    """The cache compares the model's parameters with its own copy once per pass (one read)."""
    problem = make_problem_from_id("mlp-ce-mean-three-list")
    operator = build("fisher_mc", problem, cache_batches=True)
    _products(operator, problem.dim)
    with DeviceReads(tree_leaves(problem.data)) as recorder:
        _products(operator, problem.dim)
    assert recorder.reads == ["equal", "equal"]


@pytest.mark.parametrize("mode", ["exact", "mc"])
def test_ggn_diagonal_reads_once(mode):
    """Nothing per batch; once in all, to check the first batch's output and loss for NaN."""
    problem = make_problem_from_id("mlp-ce-mean-three-list")
    p = problem
    with DeviceReads(tree_leaves(problem.data)) as recorder:
        ggn_diagonal(p.model, p.loss_func, p.params, p.data, mode=mode, check_deterministic=False)
    assert recorder.reads == ["_local_scalar_dense"]
