"""Inner products and norms summed in float64 by blocks: accuracy independent of the length."""

from __future__ import annotations

import pytest
import torch
from linalg_matrices import generator

from curvkit.linalg._dots import BLOCK, GATHER_SLICE, column_dots, norm, norms, row_dots

LENGTHS = [5, BLOCK, 3 * BLOCK, 3 * BLOCK + 17, 2 * GATHER_SLICE + 17]  # the last in slices


def positive(*shape: int, seed: int = 0) -> torch.Tensor:
    """Float32 entries in [0, 1): no cancellation, the worst case for rounding that accumulates."""
    return torch.rand(*shape, generator=generator(seed))


@pytest.mark.parametrize("n", LENGTHS)
def test_results_match_float64_for_every_shape(n):
    rows, others, vector = positive(4, n), positive(3, n, seed=1), positive(n, seed=2)
    exact = rows.double() @ others.double().T
    torch.testing.assert_close(row_dots(rows, others), exact, rtol=1e-6, atol=0)
    torch.testing.assert_close(row_dots(rows, vector), rows.double() @ vector.double(), rtol=1e-6, atol=0)
    # strided rows: the transposes of column blocks
    columns = positive(n, 3, seed=3)
    torch.testing.assert_close(
        row_dots(columns.T, columns.T), columns.double().T @ columns.double(), rtol=1e-6, atol=0
    )
    squares = (columns.double() ** 2).sum(0)
    torch.testing.assert_close(column_dots(columns, columns), squares, rtol=1e-6, atol=0)
    torch.testing.assert_close(norms(columns, 0), columns.double().norm(dim=0), rtol=1e-6, atol=0)
    torch.testing.assert_close(norms(rows), rows.double().norm(dim=1), rtol=1e-6, atol=0)
    assert norm(vector) == pytest.approx(float(vector.double().norm()), rel=1e-6)
    for result in (row_dots(rows, others), norms(rows), column_dots(columns, columns)):
        assert result.dtype == torch.float64


def test_long_float32_sums_keep_their_accuracy():
    """4·10⁶ positive float32 entries: on the CPU, float32 ``vector_norm`` and BLAS products lose
    digits in proportion to the length; the blocked sums stay within a few units of rounding."""
    n = 4_000_000
    rows, x = positive(3, n), positive(n, seed=1)
    eps = torch.finfo(torch.float32).eps
    exact = rows.double() @ x.double()
    assert float(((row_dots(rows, x) - exact) / exact).abs().max()) < 4 * eps
    exact_norm = float(x.double().norm())
    assert abs(norm(x) - exact_norm) / exact_norm < 4 * eps
    exact_norms = rows.double().norm(dim=1)
    assert float(((norms(rows) - exact_norms) / exact_norms).abs().max()) < 4 * eps
    pairs = x.reshape(-1, 2)
    exact_dots = (pairs.double() ** 2).sum(0)
    assert float(((column_dots(pairs, pairs) - exact_dots) / exact_dots).abs().max()) < 4 * eps


def test_exact_sums_where_blocks_round():
    """Vectors close to coordinate vectors: in a block, many small terms are added to a large
    one, and float32 rounding of that sum reaches the bound ``BLOCK · ε``; ``exact=True`` does not
    round (float32 products are exact in float64; their float64 sums round to at most ``n ε₆₄``,
    how much depends on the BLAS build's order)."""
    n = 5 * BLOCK * 64 + 7
    Q = 1e-3 * torch.randn(n, 3, generator=generator(0))
    Q[torch.tensor([0, 1000, 2000]), torch.arange(3)] = 1.0
    columns = Q.double().T
    exact = (columns.unsqueeze(1) * columns.unsqueeze(0)).sum(-1)  # pairwise sums: to ~ε₆₄
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(row_dots(Q.T, Q.T, exact=True), exact, rtol=0, atol=n * 1e-16)
    torch.testing.assert_close(row_dots(Q.T, Q.T), exact, rtol=0, atol=BLOCK * eps)
    torch.testing.assert_close(row_dots(Q.T, Q[:, 0]), exact[:, 0], rtol=0, atol=BLOCK * eps)


def test_float64_inputs():
    rows = torch.randn(2, 5 * BLOCK + 3, dtype=torch.float64, generator=generator(0))
    torch.testing.assert_close(row_dots(rows, rows), rows @ rows.T, rtol=1e-14, atol=1e-12)
    torch.testing.assert_close(norms(rows), rows.norm(dim=1), rtol=1e-14, atol=0)
