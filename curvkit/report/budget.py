"""The product budget: each estimating analysis's share, and the operators that count against it.

``--budget N`` is the number of products (columns multiplied) with curvature operators that the
estimating analyses spend together. Each gets a fixed share of it (:data:`SHARES`) and plans its
work to fit; a :class:`CountedOperator` charges every product to the analysis's
:class:`ProductMeter`, which refuses a product beyond the share. The dense matrices are not
estimates: they cost exactly ``D`` products each, are formed only for small models, and are
counted apart (``--no-dense`` skips them).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from curvkit import LinearOperator

SHARES = {"eigenvalues": 0.3, "traces": 0.2, "densities": 0.2, "kfac": 0.15, "sketch": 0.15}
"""Fraction of the budget for each estimating analysis (they add up to one)."""

MAX_COLUMNS = 32
"""Columns a curvature operator multiplies at once: bounds the memory of wide products."""


class BudgetTooSmallError(Exception):
    """An analysis's share of the budget is below what its smallest run needs."""


class BudgetExceededError(RuntimeError):
    """A product would spend more than the analysis's share (a planning error: never expected)."""


def share_of(analysis: str, budget: int) -> int:
    """The products ``analysis`` may spend out of ``budget``."""
    return int(budget * SHARES[analysis])


class ProductMeter:
    """Counts one analysis's products, refuses those beyond its allowance, and advances a progress bar.

    Args:
        allowance: Most products allowed (``None``: no limit, for the dense matrices).
        progress: Object with ``update(n)`` (a ``tqdm`` bar), or ``None``.
    """

    def __init__(self, allowance: int | None, progress: Any = None):
        self.allowance = allowance
        self.used = 0
        self._progress = progress

    @property
    def left(self) -> int | None:
        """Products left (``None``: no limit)."""
        return None if self.allowance is None else self.allowance - self.used

    def charge(self, products: int) -> None:
        """Count ``products`` more.

        Raises:
            BudgetExceededError: If they would exceed the allowance.
        """
        if self.left is not None and products > self.left:
            raise BudgetExceededError(f"{products} more products would exceed the share of {self.allowance}.")
        self.used += products
        if self._progress is not None:
            self._progress.update(products)


class CountedOperator(LinearOperator):
    """A curvature operator whose products are charged to a :class:`ProductMeter`.

    Same shape, dtype, device and tags as the operator; products go in blocks of at most
    :data:`MAX_COLUMNS` columns.

    Args:
        operator: The curvature operator (any curvkit :class:`~curvkit.LinearOperator`).
        meter: Where its products are counted.
    """

    def __init__(self, operator: LinearOperator, meter: ProductMeter):
        super().__init__(
            operator.shape,
            dtype=operator.dtype,
            device=operator.device,
            symmetric=operator.is_symmetric,
            psd=operator.is_psd,
        )
        self.max_columns = MAX_COLUMNS
        self.operator = operator
        self.meter = meter

    def _matmat(self, X: Tensor) -> Tensor:
        self.meter.charge(X.shape[1])
        return self.operator.matmat(X)

    def _rmatmat(self, X: Tensor) -> Tensor:
        self.meter.charge(X.shape[1])
        return self.operator.rmatmat(X)
