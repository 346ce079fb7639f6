"""The product budget: shares, counting, refusing, and the blocks a counted operator multiplies in."""

from __future__ import annotations

import pytest
import torch

from curvkit import LinearOperator, as_linear_operator
from curvkit.report.budget import (
    MAX_COLUMNS,
    SHARES,
    BudgetExceededError,
    CountedOperator,
    ProductMeter,
    share_of,
)


class _Widths(LinearOperator):
    """The identity, recording the width of every block it multiplies."""

    def __init__(self, n: int):
        super().__init__((n, n), dtype=torch.float64, device="cpu", symmetric=True, psd=True)
        self.widths: list[int] = []

    def _matmat(self, X):
        self.widths.append(X.shape[1])
        return X


class _Bar:
    def __init__(self):
        self.n = 0

    def update(self, n):
        self.n += n


def test_shares_add_up_to_the_budget():
    assert sum(SHARES.values()) == pytest.approx(1.0)
    assert sum(share_of(key, 1000) for key in SHARES) == 1000


def test_counted_operator_counts_columns_in_blocks():
    inner, bar = _Widths(100), _Bar()
    meter = ProductMeter(200, bar)
    A = CountedOperator(inner, meter)
    assert (A.shape, A.dtype, A.is_symmetric, A.is_psd) == ((100, 100), torch.float64, True, True)
    X = torch.randn(100, 70, dtype=torch.float64)
    torch.testing.assert_close(A @ X, X)
    A @ X[:, 0]
    assert (meter.used, meter.left, bar.n) == (71, 129, 71)
    assert max(inner.widths) <= MAX_COLUMNS and sum(inner.widths) == 71


def test_counted_operator_refuses_products_beyond_the_share():
    meter = ProductMeter(10)
    A = CountedOperator(as_linear_operator(torch.eye(20, dtype=torch.float64)), meter)
    A @ torch.ones(20, 10, dtype=torch.float64)
    with pytest.raises(BudgetExceededError, match="1 more products would exceed the share of 10"):
        A @ torch.ones(20, dtype=torch.float64)
    assert meter.used == 10


def test_unlimited_meter_counts():
    meter = ProductMeter(None)
    CountedOperator(as_linear_operator(torch.eye(5)), meter).to_dense()
    assert (meter.used, meter.left) == (5, None)
