"""Products in blocks of columns: :attr:`~ColumnBlocks.max_columns` and a memory budget.

A product with ``k`` columns of a curvature operator holds ``k`` copies of the model's
activations, so its memory grows with ``k``; every operator can split wide inputs into balanced
blocks of columns, at a width set by hand or measured against a budget
(design notes, "Wide products: `max_columns`", "Memory budgets"). :class:`ColumnBlocks` is
:class:`curvkit.linear_operator.LinearOperator`'s part that decides the blocks and multiplies
them; ``LinearOperator._product`` calls it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from curvkit._boundary import as_integer
from curvkit._memory import PeakMemory, measurable
from curvkit._pages import empty_block

PROBE_COLUMNS = 2
"""Columns of the product that measures what a column costs under a :attr:`ColumnBlocks.memory_budget`."""


class ColumnBlocks:
    """Limits on the columns multiplied at once, and the blocked products that keep them."""

    _max_columns: int | None = None
    _memory_budget: int | None = None
    _budget_columns: int | None = None  # the block width the budget allows, found by the probe

    @property
    def max_columns(self) -> int | None:
        """Most columns multiplied at once (``None``: no limit); wider inputs go in balanced blocks.

        ``k`` columns go in ``⌈k / max_columns⌉`` blocks of nearly equal width (7 columns with
        ``max_columns=3``: 3, 2, 2), so no lone column takes a single-vector path of its own.

        A curvature product with ``k`` columns holds ``k`` copies of the model's activations
        (``vmap`` over the columns), so its memory grows with ``k``; each block costs one more
        primal pass over the data (what both come to on a CNN: design notes, "Wide products:
        `max_columns`", and ``benchmarks/column_blocks.py``).
        Every block is the same matrix: the Monte-Carlo Fisher re-seeds its draw per product.
        It acts where it is set: on a curvature operator inside ``H + damping * I``, set it on
        ``H``; ``A.T.max_columns`` is ``A``'s.

        Raises:
            ValueError: If set to anything but a positive integer or ``None``.
        """
        return self._max_columns

    @max_columns.setter
    def max_columns(self, value: int | None) -> None:
        self._max_columns = None if value is None else as_integer(value, "max_columns", minimum=1)

    @property
    def memory_budget(self) -> int | None:
        """Bytes a product may use beyond its input and result (``None``: no budget).

        With a budget, the first product with more than :data:`PROBE_COLUMNS` columns multiplies
        its first :data:`PROBE_COLUMNS` columns alone and measures the peak memory they add
        (:mod:`curvkit._memory`: the allocator's peak on CUDA, the resident set's high-water
        mark on Linux CPUs); that peak, over the probe's width, is taken as the cost of a column
        (fixed costs included, so it errs on the safe side), and this and every later product
        go in blocks of at most ``budget // cost`` columns (at least one). Wide products —
        ``to_dense()``, the sketches, block Lanczos, the estimators' blocks of random vectors
        (:attr:`columns_per_product`) — then stay within the budget. :attr:`max_columns`, if
        smaller, still applies. Setting the budget again measures again.

        Raises:
            ValueError: If set to anything but a positive integer or ``None``.
            RuntimeError: On a product with a budget, where peak memory cannot be measured.
        """
        return self._memory_budget

    @memory_budget.setter
    def memory_budget(self, value: int | None) -> None:
        self._memory_budget = None if value is None else as_integer(value, "memory_budget", minimum=1)
        self._budget_columns = None

    def _column_limit(self) -> int | None:
        """The smaller of :attr:`max_columns` and the budget's block width (``None``: no limit)."""
        limits = [limit for limit in (self._max_columns, self._budget_columns) if limit is not None]
        return min(limits) if limits else None

    @property
    def columns_per_product(self) -> int | None:
        """Most columns that a product with this operator, or with one it is built from, takes at once.

        The operator's :attr:`max_columns` (or the block width its :attr:`memory_budget` allows,
        once measured, if smaller), or, for an operator built from others (sums,
        scalings, products, transposes), the smallest limit among it and them; ``None`` if
        nothing is limited. The randomized routines of :mod:`curvkit.linalg` draw and multiply
        their random vectors in blocks of this width, so that ``A.max_columns`` bounds their
        memory too.
        """
        return self._column_limit()

    def _probed(self, multiply: Any, X: Tensor, expected: tuple[int, int]) -> Tensor:
        """The product, its first :data:`PROBE_COLUMNS` columns measured to set the budget's width.

        Raises:
            RuntimeError: If peak memory cannot be measured on the operator's device.
        """
        device = X.device
        if not measurable(device):
            raise RuntimeError(
                f"memory_budget is set, but peak memory cannot be measured on {device} here (CUDA, "
                "or a CPU under Linux). Set max_columns instead."
            )
        with PeakMemory(device) as peak:
            first = self._checked(multiply(X[:, :PROBE_COLUMNS]), (expected[0], PROBE_COLUMNS))
        per_column = max(peak.bytes / PROBE_COLUMNS, 1.0)
        self._budget_columns = self._agreed_width(max(int(self._memory_budget // per_column), 1))
        rest, expected_rest = X[:, PROBE_COLUMNS:], (expected[0], expected[1] - PROBE_COLUMNS)
        num_blocks = self._num_blocks(rest.shape[1])
        if num_blocks == 1:
            return torch.cat([first, self._checked(multiply(rest), expected_rest)], dim=1)
        return torch.cat([first, self._in_blocks(multiply, rest, num_blocks, expected_rest)], dim=1)

    def _agreed_width(self, width: int) -> int:
        """The budget's block width; data-parallel operators take the smallest over their ranks."""
        return width

    def _num_blocks(self, num_columns: int) -> int:
        """``⌈k / limit⌉`` blocks for ``k`` columns, with :meth:`_column_limit` (1 without one)."""
        limit = self._column_limit()
        return 1 if limit is None else -(-num_columns // limit)

    def _in_blocks(self, multiply: Any, X: Tensor, num_blocks: int, expected: tuple[int, int]) -> Tensor:
        """``multiply`` on ``num_blocks`` balanced blocks of ``X``'s columns (no lone remainder column).

        The columns are handled as the rows of ``Xᵀ``: ``X`` is transposed once (unless it is
        already stored column by column), each block is a view of its rows, and each block's
        result is written into the rows of the result, which is returned transposed. Splitting a
        row-major ``X`` into contiguous column blocks and concatenating their results instead
        costs two strided copies per block.
        """
        columns = X if X.stride(0) == 1 else X.T.contiguous().T
        result_rows = empty_block((expected[1], expected[0]), X.dtype, X.device)
        start = 0
        for block in columns.tensor_split(num_blocks, dim=1):
            width = block.shape[1]
            result_rows[start : start + width] = self._checked(multiply(block), (expected[0], width)).T
            start += width
        return result_rows.T

    def _checked(self, result: Tensor, expected: tuple[int, int]) -> Tensor:
        """``result`` if it has the ``expected`` shape.

        Raises:
            RuntimeError: Naming the subclass, if it returned another shape.
        """
        if result.shape != expected:
            raise RuntimeError(
                f"{type(self).__name__} returned a result of shape {list(result.shape)}, "
                f"expected {list(expected)}."
            )
        return result
