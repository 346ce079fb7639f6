"""Hutch++ trace estimation (Meyer, Musco, Musco & Woodruff, 2021)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from curvkit._boundary import as_integer
from curvkit._pages import empty_block
from curvkit.linalg._dots import column_dots, row_dots
from curvkit.linalg._operator import square_operator, working_dtype
from curvkit.linalg._orthonormal import orthonormalize_rows_
from curvkit.linalg._progress import product_progress
from curvkit.linalg._random import (
    RandomColumns,
    Seed,
    as_generator,
    block_width,
    check_distribution,
    random_block,
    spent_rows,
)
from curvkit.linear_operator import LinearOperator


def range_basis(
    A: LinearOperator, basis_dim: int, distribution: str, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """An orthonormal basis ``Q`` of ``range(A S)`` for a random ``[n, basis_dim]`` sketch ``S``.

    ``S`` is drawn in blocks into the rows of ``Q`` that their products then replace; ``Q`` is
    stored as rows, orthonormalized in place.

    Returns:
        ``Qᵀ`` (``[basis_dim, n]``), ``Tr(Qᵀ A Q)`` (float64), at the cost of ``2 · basis_dim``
        products, and the last of these products (the widest block's), whose memory the caller
        may reuse (:func:`~curvkit.linalg._random.spent_rows`).
    """
    dtype, n = working_dtype(A), A.shape[0]
    width = block_width(A, basis_dim)
    Q_rows = empty_block((basis_dim, n), dtype, A.device)
    S = RandomColumns(n, basis_dim, distribution, generator, dtype, A.device)
    for start in range(0, basis_dim, width):
        rows = Q_rows[start : start + width]  # S's columns, replaced by their products
        rows.copy_(A.matmat(S.draw_into(rows, start).T).T)
    orthonormalize_rows_(Q_rows)
    trace = torch.zeros((), dtype=torch.float64, device=A.device)
    for start in reversed(range(0, basis_dim, width)):  # the widest block last
        Q = Q_rows[start : start + width].T
        product = A.matmat(Q)
        trace += column_dots(Q, product).sum()
    return Q_rows, trace, product


def projected_out_(Q_rows: Tensor, G: Tensor) -> Tensor:
    """``G ← (I - Q Qᵀ) G`` in place, for an orthonormal basis given as rows ``Qᵀ``.

    ``G`` is a block of random columns, the transpose of contiguous rows: one matrix product
    updates them, with no ``[n, k]`` temporary.
    """
    G.T.addmm_(row_dots(Q_rows, G.T).T.to(G.dtype), Q_rows, alpha=-1)
    return G


def hutchpp_trace(
    A: Any,
    num_matvecs: int,
    distribution: str = "rademacher",
    *,
    seed: Seed = None,
    progressbar: bool = False,
) -> Tensor:
    r"""Estimate :math:`\mathrm{Tr}(\mathbf{A})` with Hutch++.

    Splits the budget of :math:`m` products into three blocks of sizes :math:`k = \lfloor m/3
    \rfloor`, :math:`k` and :math:`m - 2k`: an orthonormal basis :math:`\mathbf{Q}` of
    :math:`\mathrm{range}(\mathbf{A}\mathbf{S})` for a random :math:`\mathbf{S} \in
    \mathbb{R}^{n\times k}`, the exact trace of :math:`\mathbf{A}` on that subspace, and
    Hutchinson's estimator on its complement with random :math:`\mathbf{G}`:

    .. math::
        \mathrm{Tr}(\mathbf{A}) \approx \mathrm{Tr}(\mathbf{Q}^\top \mathbf{A} \mathbf{Q})
        + \frac{1}{m - 2k} \mathrm{Tr}\bigl(\mathbf{G}^\top (\mathbf{I} - \mathbf{Q}\mathbf{Q}^\top)
        \mathbf{A} (\mathbf{I} - \mathbf{Q}\mathbf{Q}^\top) \mathbf{G}\bigr).

    For positive semi-definite :math:`\mathbf{A}` the relative error decays as :math:`O(1/m)`
    instead of Hutchinson's :math:`O(1/\sqrt{m})`.

    Memory: the basis :math:`\mathbf{Q}` (``k n`` numbers for ``A ∈ ℝⁿˣⁿ``) and one block of
    ``b`` vectors with its product and their entrywise product (``3 b n``), with
    ``b = A.columns_per_product`` (``A.max_columns``) or all columns of a stage; the estimate is
    the same for every ``b``.

    Meyer, R. A., Musco, C., Musco, C., & Woodruff, D. P. (2021). Hutch++: Optimal stochastic
    trace estimation. Symposium on Simplicity in Algorithms (SOSA).

    Args:
        A: Square operator.
        num_matvecs: Number of products with ``A``, at least 3 and at most ``3 · dim``.
        distribution: ``'rademacher'`` or ``'normal'``, for both ``S`` and ``G``.
        seed: ``int``, ``torch.Generator`` or ``None``.
        progressbar: Show one progress bar for the run, counting products.

    Returns:
        The estimate as a 0-dimensional tensor on the operator's device.

    Raises:
        ValueError: If ``A`` is not square, ``num_matvecs`` is out of range, or ``distribution``
            is unknown.

    Example:
        >>> import torch
        >>> U = torch.linalg.qr(torch.randn(50, 3, dtype=torch.float64)).Q
        >>> A = U @ torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ U.T
        >>> round(float(hutchpp_trace(A, 9, seed=0)), 8)  # rank 3 ≤ 9 // 3: exact
        6.0
    """
    A = square_operator(A, typed=True)
    as_integer(num_matvecs, "num_matvecs", minimum=3)
    check_distribution(distribution)
    basis_dim = num_matvecs // 3
    if basis_dim > A.shape[0]:
        raise ValueError(
            f"num_matvecs must be at most 3 · dim = {3 * A.shape[0]} for Hutch++, got {num_matvecs}."
        )
    generator = as_generator(seed, A.device)
    num_hutchinson = num_matvecs - 2 * basis_dim
    hutchinson = torch.zeros((), dtype=torch.float64, device=A.device)
    with product_progress(A, progressbar, "hutchpp_trace", num_matvecs) as A:
        Q_rows, trace, product = range_basis(A, basis_dim, distribution, generator)
        columns = RandomColumns(A.shape[0], num_hutchinson, distribution, generator, Q_rows.dtype, A.device)
        width = block_width(A, num_hutchinson)
        buffer = spent_rows(product, min(width, num_hutchinson), Q_rows.dtype, apart_from=Q_rows)
        del product
        for _, G in columns.blocks(width, buffer):
            projected_out_(Q_rows, G)
            hutchinson += column_dots(G, A.matmat(G)).sum()
    return (trace + hutchinson / num_hutchinson).to(Q_rows.dtype)


class HutchPPTraceEstimator:
    r"""Class to perform trace estimation with the Hutch++ method.

    In contrast to vanilla Hutchinson, Hutch++ has lower variance, but requires more memory.
    For details, see

    Meyer, R. A., Musco, C., Musco, C., & Woodruff, D. P. (2021). Hutch++: Optimal stochastic
    trace estimation. Symposium on Simplicity in Algorithms (SOSA).

    Let :math:`\mathbf{A}` be a square linear operator whose trace we want to approximate.
    First, we compute an orthonormal basis :math:`\mathbf{Q}` of a sub-space spanned by
    :math:`\mathbf{A} \mathbf{S}` where :math:`\mathbf{S}` is a tall random matrix with i.i.d.
    elements. Then, we compute the trace in the sub-space and apply Hutchinson's estimator in
    the remaining space spanned by :math:`\mathbf{I} - \mathbf{Q} \mathbf{Q}^\top`: we draw a
    random vector :math:`\mathbf{v}` with :math:`\mathbb{E}[\mathbf{v} \mathbf{v}^\top] =
    \mathbf{I}` and sample from the estimator

    .. math::
        a := \mathrm{Tr}(\mathbf{Q}^\top \mathbf{A} \mathbf{Q}) + \mathbf{v}^\top (\mathbf{I} -
        \mathbf{Q} \mathbf{Q}^\top)^\top \mathbf{A} (\mathbf{I} - \mathbf{Q} \mathbf{Q}^\top)
        \mathbf{v} \approx \mathrm{Tr}(\mathbf{A})\,.

    This estimator is unbiased, as the first term is constant and the second part is
    Hutchinson's estimator in a sub-space. The function form with a budget of products is
    :func:`hutchpp_trace`.

    Note:
        For a fair comparison with ``s`` Hutchinson samples, ``basis_dim`` should be ``s / 3``
        and ``s / 3`` samples be drawn (the basis costs ``2 · basis_dim`` products).

    Args:
        A: Linear square-shaped operator whose trace will be estimated.
        basis_dim: Dimension of the subspace used for exact trace estimation, at most the
            operator's dimension. Default: 1% of the dimension, at least 1 and at most 10.
        basis_distribution: Distribution of the vectors used to construct the subspace, either
            ``'rademacher'`` or ``'normal'``.
        seed: ``int``, ``torch.Generator`` or ``None`` (seed drawn once from NumPy's global
            random state).

    Raises:
        ValueError: If the operator is not square, the basis dimension is too large, or the
            distribution is unknown.

    Example:
        >>> from numpy import trace, mean, round
        >>> from numpy.random import rand, seed
        >>> seed(0)  # make deterministic
        >>> A = rand(10, 10)
        >>> tr_A = trace(A)  # exact trace as reference
        >>> estimator = HutchPPTraceEstimator(A)
        >>> # one- and multi-sample approximations
        >>> tr_A_low_precision = estimator.sample()
        >>> tr_A_high_precision = mean([estimator.sample() for _ in range(998)])
        >>> # assert abs(tr_A - tr_A_low_precision) > abs(tr_A - tr_A_high_precision)
        >>> print(round(tr_A, 4), round(tr_A_low_precision, 4), round(tr_A_high_precision, 4))
        4.4575 2.9709 4.4992
    """

    def __init__(
        self, A: Any, basis_dim: int | None = None, basis_distribution: str = "rademacher", seed: Seed = None
    ):
        self._A = square_operator(A, typed=True)
        dim = self._A.shape[0]
        basis_dim = min(10, max(dim // 100, 1)) if basis_dim is None else basis_dim
        as_integer(basis_dim, "basis_dim", minimum=1)
        if basis_dim > dim:
            raise ValueError(f"basis_dim must be at most the operator's dimension {dim}, got {basis_dim}.")
        self._basis_dim = basis_dim
        self._basis_distribution = check_distribution(basis_distribution, "basis_distribution")
        self._generator = as_generator(seed, self._A.device)
        self._Q_rows: Tensor | None = None
        self._trace_on_basis = 0.0

    def sample(self, distribution: str = "rademacher") -> float:
        """Draw a sample from the trace estimator (one product, plus ``2 · basis_dim`` the first time).

        Multiple samples can be combined into a more accurate trace estimation via averaging.
        The first call computes the sub-space and its trace, which are cached.

        Args:
            distribution: ``'rademacher'`` or ``'normal'``.

        Returns:
            Sample from the trace estimator.

        Raises:
            ValueError: If ``distribution`` is unknown.
        """
        check_distribution(distribution)
        if self._Q_rows is None:
            self._Q_rows, trace, _ = range_basis(
                self._A, self._basis_dim, self._basis_distribution, self._generator
            )
            self._trace_on_basis = float(trace)
        Q_rows = self._Q_rows
        v = random_block(Q_rows.shape[1], 1, distribution, self._generator, Q_rows.dtype, Q_rows.device)
        projected_out_(Q_rows, v)
        return self._trace_on_basis + float((v * self._A.matmat(v)).sum())
