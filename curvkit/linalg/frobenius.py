"""Hutchinson-type estimation of the squared Frobenius norm."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from curvkit._boundary import as_integer
from curvkit.linalg._operator import linalg_operator, working_dtype
from curvkit.linalg._random import Seed, as_generator, check_distribution, random_block


def hutchinson_squared_fro(
    A: Any, num_matvecs: int, *, distribution: str = "rademacher", seed: Seed = None
) -> Tensor:
    r"""Estimate :math:`\|\mathbf{A}\|_F^2 = \mathrm{Tr}(\mathbf{A}^\top\mathbf{A})`.

    Hutchinson's estimator applied to :math:`\mathbf{A}^\top\mathbf{A}`, which needs only
    products with :math:`\mathbf{A}`: for a block :math:`\mathbf{V} \in \mathbb{R}^{n\times m}`
    with :math:`\mathbb{E}[\mathbf{v}\mathbf{v}^\top] = \mathbf{I}`,

    .. math::
        \|\mathbf{A}\|_F^2 \approx \frac{1}{m}\|\mathbf{A}\mathbf{V}\|_F^2.

    Works for rectangular operators.

    Args:
        A: Operator of shape ``[m, n]``.
        num_matvecs: Number of products with ``A``, at least 1.
        distribution: ``'rademacher'`` or ``'normal'``.
        seed: ``int``, ``torch.Generator`` or ``None``.

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
    check_distribution(distribution)
    generator = as_generator(seed, A.device)
    V = random_block(A.shape[1], num_matvecs, distribution, generator, working_dtype(A), A.device)
    return A.matmat(V).square().sum() / num_matvecs
