"""Random vectors in blocks: the estimates do not depend on the block width, and memory is bounded."""

from __future__ import annotations

import gc
import re
import warnings
from functools import partial
from pathlib import Path

import numpy
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch
from linalg_matrices import CountingOperator, low_rank_plus_noise, random_symmetric

import curvkit.linalg._random as random_module
from curvkit import DiagonalLinearOperator, IdentityLinearOperator
from curvkit.linalg import (
    hutchinson_diag,
    hutchinson_squared_fro,
    hutchinson_trace,
    hutchpp_trace,
    xdiag,
    xtrace,
)
from curvkit.linalg._random import RandomColumns, random_block
from curvkit.linear_operator import DenseLinearOperator, LinearOperator

ESTIMATORS = {
    "hutchinson_trace": hutchinson_trace,
    "hutchpp_trace": hutchpp_trace,
    "xtrace": xtrace,
    "hutchinson_diag": hutchinson_diag,
    "xdiag": xdiag,
    "hutchinson_squared_fro": hutchinson_squared_fro,
}


# ------------------------------------------------------------------------------- random columns
@pytest.mark.parametrize("distribution", ["rademacher", "normal"])
@pytest.mark.parametrize("num_rows", [1, 7, 8, 9, 1000])
def test_any_block_of_columns_is_the_same_slice(distribution, num_rows):
    columns = RandomColumns(num_rows, 9, distribution, torch.Generator().manual_seed(3), torch.float64, None)
    whole = columns.block(0, 9)
    assert whole.shape == (num_rows, 9)
    for start, stop in [(0, 1), (2, 7), (8, 9)]:
        assert torch.equal(columns.block(start, stop), whole[:, start:stop])
    # each block is drawn into the buffer of the one before: kept blocks are clones
    assert torch.equal(torch.cat([block.clone() for _, block in columns.blocks(4)], dim=1), whole)
    assert len({block.data_ptr() for _, block in columns.blocks(4)}) == 1
    rows = torch.empty(5, num_rows, dtype=torch.float64)
    assert torch.equal(columns.draw_into(rows, 2).T, whole[:, 2:7])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rademacher_columns_are_signs_in_the_requested_dtype(dtype):
    block = random_block(1001, 50, "rademacher", torch.Generator().manual_seed(0), dtype, None)
    assert block.dtype == dtype
    assert set(block.unique().tolist()) == {-1.0, 1.0}
    # independent fair signs: the Gram matrix / n is I up to sampling noise O(1 / √n)
    gram = block.double().T @ block.double() / 1001
    assert (gram - torch.eye(50, dtype=torch.float64)).abs().max() < 0.2
    assert abs(float(block.double().mean())) < 4 / (1001 * 50) ** 0.5


@pytest.mark.parametrize("sign_slice", [1, 64, 200])
@pytest.mark.parametrize("num_rows", [31, 64, 1000, 1030])
def test_rademacher_signs_do_not_depend_on_the_slices_they_are_written_in(monkeypatch, num_rows, sign_slice):
    whole = random_block(num_rows, 3, "rademacher", torch.Generator().manual_seed(5), torch.float32, None)
    monkeypatch.setattr(random_module, "SIGN_SLICE", sign_slice)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an out= slice of the wrong size warns before it is resized
        sliced = random_block(
            num_rows, 3, "rademacher", torch.Generator().manual_seed(5), torch.float32, None
        )
    assert torch.equal(sliced, whole)


@pytest.mark.parametrize("num_rows", [1, 15, 16, 17, 31, 33, 64, 65, 1000])
def test_rademacher_signs_are_the_same_in_every_dtype(num_rows):
    """The bits become signs in integers of the dtype's width: the same signs for every width."""
    blocks = [
        random_block(num_rows, 3, "rademacher", torch.Generator().manual_seed(5), dtype, None).double()
        for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
    ]
    for block in blocks[1:]:
        assert torch.equal(block, blocks[0])


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8])
def test_rademacher_columns_in_an_integer_dtype_are_the_same_signs(dtype):
    signs = random_block(100, 3, "rademacher", torch.Generator().manual_seed(5), dtype, None)
    floats = random_block(100, 3, "rademacher", torch.Generator().manual_seed(5), torch.float32, None)
    assert signs.dtype == dtype and torch.equal(signs.float(), floats)


def test_normal_columns_have_unit_variance_and_zero_mean():
    block = random_block(20_000, 8, "normal", torch.Generator().manual_seed(0), torch.float64, None)
    assert torch.allclose(block.var(dim=0), torch.ones(8, dtype=torch.float64), atol=0.05)
    assert block.mean().abs() < 4 / (20_000 * 8) ** 0.5


def test_a_generator_continues_its_stream_and_a_seed_repeats_it():
    generator = torch.Generator().manual_seed(0)
    first = random_block(100, 2, "rademacher", generator, torch.float64, None)
    second = random_block(100, 2, "rademacher", generator, torch.float64, None)
    assert not torch.equal(first, second)
    assert torch.equal(
        first, random_block(100, 2, "rademacher", torch.Generator().manual_seed(0), torch.float64, None)
    )


# ------------------------------------------------------------------------------- block widths
@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("distribution", ["rademacher", "normal"])
def test_the_estimate_does_not_depend_on_the_block_width(name, distribution):
    estimator = ESTIMATORS[name]
    matrix = low_rank_plus_noise(n=60)
    A = CountingOperator(matrix, symmetric=True)
    reference = estimator(matrix, 14, distribution=distribution, seed=5)
    for width in (1, 3, 5, 14):
        A.max_columns = width
        A.num_columns = 0
        estimate = estimator(A, 14, distribution=distribution, seed=5)
        torch.testing.assert_close(estimate, reference, rtol=1e-12, atol=1e-12)
        assert A.num_columns == 14  # the budget, whatever the blocks
        assert A.max_columns == width


@pytest.mark.parametrize("name", ["xtrace", "xdiag", "hutchpp_trace"])
def test_an_operator_not_declared_symmetric_gives_the_same_estimate(name):
    """XTrace keeps A Q for a general operator and uses R = Qᵀ A Ω for a symmetric one."""
    matrix = random_symmetric(40) + 40 * torch.eye(40, dtype=torch.float64)
    symmetric = ESTIMATORS[name](DenseLinearOperator(matrix, symmetric=True), 12, seed=1)
    general = ESTIMATORS[name](DenseLinearOperator(matrix), 12, seed=1)
    torch.testing.assert_close(symmetric, general, rtol=1e-10, atol=1e-10)


def test_xtrace_and_xdiag_on_a_non_symmetric_operator_match_the_leave_one_out_definition():
    """Brute force: for each i, an orthonormal basis of A Ω without column i, and Hutchinson on the rest."""
    torch.manual_seed(0)
    matrix = torch.randn(30, 30, dtype=torch.float64) + 10 * torch.eye(30, dtype=torch.float64)
    m = 6
    Omega = RandomColumns(30, m, "rademacher", torch.Generator().manual_seed(2), torch.float64, None)
    Omega = Omega.block(0, m)
    Y = matrix @ Omega
    traces, diagonals = [], []
    for i in range(m):
        Q = torch.linalg.qr(Y[:, [j for j in range(m) if j != i]]).Q
        residual = Omega[:, i] - Q @ (Q.T @ Omega[:, i])
        traces.append(torch.trace(Q.T @ matrix @ Q) + residual @ matrix @ residual)
        low_rank = Q @ (Q.T @ matrix)
        diagonals.append(
            low_rank.diagonal() + Omega[:, i] * (matrix @ Omega[:, i] - Q @ (Q.T @ matrix @ Omega[:, i]))
        )
    A = DenseLinearOperator(matrix)
    A.max_columns = 4
    torch.testing.assert_close(
        xtrace(A, 2 * m, seed=torch.Generator().manual_seed(2)), torch.stack(traces).mean()
    )
    torch.testing.assert_close(
        xdiag(A, 2 * m, seed=torch.Generator().manual_seed(2)), torch.stack(diagonals).mean(0)
    )


class _ReturnsItsInput(LinearOperator):
    """The identity, whose product is its input itself (as SciPy's ``IdentityOperator`` does)."""

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        return X


@pytest.mark.parametrize("width", [2, 3, 16])
def test_hutchpp_draws_into_a_spent_product_but_never_into_its_own_basis(width):
    """Hutch++ draws its last random vectors into the memory of its last basis product, unless
    that product is the basis itself: an identity that returns its input (curvkit's or SciPy's)
    gives the estimate of one that returns a copy (whose memory is reused)."""
    n, budget = 200, 16
    copying = IdentityLinearOperator(n, dtype=torch.float64)
    returning = _ReturnsItsInput((n, n), dtype=torch.float64, symmetric=True)
    scipy_identity = scipy.sparse.linalg.aslinearoperator(scipy.sparse.identity(n))
    for A in (copying, returning):
        A.max_columns = width
    product = copying.matmat(torch.ones(n, width, dtype=torch.float64).T.contiguous().T)
    assert random_module.spent_rows(product, width, torch.float64, torch.zeros(1)) is not None
    reference = hutchpp_trace(copying, budget, seed=3)
    for A in (returning, scipy_identity):
        torch.testing.assert_close(hutchpp_trace(A, budget, seed=3), reference, rtol=1e-14, atol=0)


def test_a_limit_inside_a_composite_operator_sets_the_blocks():
    inner = CountingOperator(low_rank_plus_noise(n=50), symmetric=True)
    inner.max_columns = 4
    damped = 2.0 * (inner + 1e-3 * IdentityLinearOperator(50))
    assert damped.columns_per_product == 4
    assert damped.T.columns_per_product == 4
    hutchinson_trace(damped, 10, seed=0)
    assert inner.num_calls == 3  # 10 columns in blocks of at most 4: the sum received 4, 4, 2
    damped.max_columns = 2
    assert damped.columns_per_product == 2


# ------------------------------------------------------------------------------- memory
def _resident_peak() -> int:
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def _resident() -> int:
    return int(re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def _can_measure_peaks() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return "VmHWM" in Path("/proc/self/status").read_text()


NUM_ENTRIES = 10_000_000
BLOCK = 4
# (estimator, budget, documented bound in vectors of length n: the method's basis plus its blocks)
MEMORY_CASES = {
    "hutchinson_trace": (partial(hutchinson_trace, num_matvecs=40), 3 * BLOCK),
    "hutchinson_diag": (partial(hutchinson_diag, num_matvecs=40), 3 * BLOCK + 1),
    "hutchinson_squared_fro": (partial(hutchinson_squared_fro, num_matvecs=40), 3 * BLOCK),
    "hutchpp_trace": (partial(hutchpp_trace, num_matvecs=40), 13 + 3 * BLOCK),
    "xtrace": (partial(xtrace, num_matvecs=20), 10 + 3 * BLOCK),
    "xdiag": (partial(xdiag, num_matvecs=20), 2 * 10 + 4 * BLOCK + 3),
}


@pytest.mark.slow
@pytest.mark.skipif(
    not _can_measure_peaks(), reason="needs Linux's /proc/self/clear_refs to read peak memory"
)
@pytest.mark.parametrize("name", MEMORY_CASES)
def test_peak_memory_on_ten_million_entries_stays_within_the_documented_bound(name):
    """A diagonal operator with 10⁷ entries in blocks of 4: the old estimators drew all vectors at once,
    as int64 first (40 Rademacher vectors: 3.2 GB of integers, then 1.6 GB of floats)."""
    estimator, bound_in_vectors = MEMORY_CASES[name]
    diagonal = torch.rand(NUM_ENTRIES, generator=torch.Generator().manual_seed(0)) + 1.0
    A = DiagonalLinearOperator(diagonal)
    A.max_columns = BLOCK
    gc.collect()
    before = _resident()
    Path("/proc/self/clear_refs").write_text("5")
    estimate = estimator(A, seed=0)
    peak = _resident_peak() - before
    vector_bytes = NUM_ENTRIES * 4
    slack = 64 * 2**20  # seeds, tables, float64 slices of the Gram matrices, small tensors
    assert peak <= bound_in_vectors * vector_bytes + slack, f"{peak / vector_bytes:.1f} vectors"
    exact = diagonal.sum() if estimator.func in (hutchinson_trace, hutchpp_trace, xtrace) else None
    if exact is not None:
        assert abs(float(estimate) - float(exact)) < 1e-3 * float(exact)
    elif estimator.func is hutchinson_squared_fro:
        assert abs(float(estimate) - float(diagonal.square().sum())) < 1e-3 * float(diagonal.square().sum())
    else:  # Hutchinson's Rademacher estimate is exact on a diagonal, XDiag's has noise of order 1e-3
        rtol = 1e-2 if estimator.func is xdiag else 1e-6
        assert numpy.allclose(estimate.numpy(), diagonal.numpy(), rtol=rtol)
