"""Hutchinson-type estimation of the squared Frobenius norm."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from curvkit._boundary import as_integer
from curvkit.linalg._dots import column_dots
from curvkit.linalg._operator import linalg_operator, working_dtype
from curvkit.linalg._progress import product_progress
from curvkit.linalg._random import RandomColumns, Seed, as_generator, block_width


def hutchinson_squared_fro(
    A: Any,
    num_matvecs: int,
    distribution: str = "rademacher",
    *,
    seed: Seed = None,
    progressbar: bool = False,
) -> Tensor:
    r"""Estimate :math:`\|\mathbf{A}\|_F^2 = \mathrm{Tr}(\mathbf{A}^\top\mathbf{A})`.

    Hutchinson's estimator applied to :math:`\mathbf{A}^\top\mathbf{A}`, which needs only
    products with :math:`\mathbf{A}`: for random vectors :math:`\mathbf{V} = [\mathbf{v}_1, \dots,
    \mathbf{v}_m] \in \mathbb{R}^{n\times m}` with :math:`\mathbb{E}[\mathbf{v}\mathbf{v}^\top]
    = \mathbf{I}`, multiplied in blocks,

    .. math::
        \|\mathbf{A}\|_F^2 \approx \frac{1}{m}\|\mathbf{A}\mathbf{V}\|_F^2.

    Works for rectangular operators. Memory: one block of ``b`` vectors and its product, for
    ``A ∈ ℝᵖˣⁿ`` ``b (n + 2p)`` numbers, with ``b = A.columns_per_product`` (``A.max_columns``)
    or all ``m`` if that is not set; the estimate is the same for every ``b``.

    Args:
        A: Operator of shape ``[m, n]``.
        num_matvecs: Number of products with ``A``, at least 1.
        distribution: ``'rademacher'`` or ``'normal'``.
        seed: ``int``, ``torch.Generator`` or ``None``.
        progressbar: Show one progress bar for the run, counting products.

    Returns:
        The estimate as a 0-dimensional tensor on the operator's device.

    Raises:
        ValueError: If ``num_matvecs < 1`` or ``distribution`` is unknown.

    Example:
        >>> import torch
        >>> A = torch.eye(4, dtype=torch.float64)[:, :3] * 2.0
        >>> float(hutchinson_squared_fro(A, 5, seed=0))  # exact for Rademacher: AᵀA is diagonal
        12.0
    """
    A = linalg_operator(A, square=False, typed=True)
    as_integer(num_matvecs, "num_matvecs", minimum=1)
    columns = RandomColumns(
        A.shape[1], num_matvecs, distribution, as_generator(seed, A.device), working_dtype(A), A.device
    )
    total = torch.zeros((), dtype=torch.float64, device=A.device)
    with product_progress(A, progressbar, "hutchinson_squared_fro", num_matvecs) as A:
        for _, V in columns.blocks(block_width(A, num_matvecs)):
            AV = A.matmat(V)
            total += column_dots(AV, AV).sum()
    return (total / num_matvecs).to(working_dtype(A))
