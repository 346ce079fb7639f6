r"""Leave-one-out range bases, the building block of XTrace and XDiag.

Epperly, E. N., Tropp, J. A., & Webber, R. J. (2024). XTrace: Making the most of every sample in
stochastic trace estimation. SIAM Journal on Matrix Analysis and Applications.

For a random test matrix :math:`\mathbf{\Omega} = [\boldsymbol{\omega}_1, \dots,
\boldsymbol{\omega}_m]` and :math:`\mathbf{Y} = \mathbf{A}\mathbf{\Omega} = \mathbf{Q}\mathbf{R}`,
the exchangeable estimators need, for each :math:`i`, an orthonormal basis
:math:`\mathbf{Q}_{(i)}` of the range of :math:`\mathbf{Y}` without its :math:`i`-th column. It
is the orthogonal complement of :math:`\mathbf{Q}\mathbf{s}_i` in :math:`\mathrm{range}(\mathbf{Q})`,
where :math:`\mathbf{s}_i` is the normalized :math:`i`-th column of :math:`\mathbf{R}^{-\top}`
(:math:`\mathbf{s}_i^\top \mathbf{R} \propto \mathbf{e}_i^\top` is orthogonal to every other
column of :math:`\mathbf{R}`), so that

.. math::
    \mathbf{Q}_{(i)}\mathbf{Q}_{(i)}^\top
    = \mathbf{Q}(\mathbf{I} - \mathbf{s}_i\mathbf{s}_i^\top)\mathbf{Q}^\top,

all :math:`m` downdates at the price of one QR factorization and one triangular solve.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from curvkit._boundary import as_integer
from curvkit.linalg._operator import square_operator, working_dtype
from curvkit.linalg._random import check_distribution, random_block
from curvkit.linear_operator import LinearOperator


class LeaveOneOutBasis(NamedTuple):
    """``Ω``, ``Y = A Ω``, ``Y = Q R`` and the downdating directions ``S`` (columns ``s_i``)."""

    Omega: Tensor
    Y: Tensor
    Q: Tensor
    R: Tensor
    S: Tensor


def checked_half_budget(A, num_matvecs: int, distribution: str, method: str) -> tuple[LinearOperator, int]:
    """Validate the arguments of an exchangeable estimator; return the operator and ``m = num_matvecs // 2``.

    Raises:
        ValueError: If ``A`` is not square, ``num_matvecs`` is not in ``[2, 2 · dim]`` or
            ``distribution`` is unknown.
    """
    A = square_operator(A, typed=True)
    as_integer(num_matvecs, "num_matvecs", minimum=2)
    check_distribution(distribution)
    if num_matvecs // 2 > A.shape[0]:
        raise ValueError(
            f"num_matvecs must be at most 2 · dim = {2 * A.shape[0]} for {method}, got {num_matvecs}."
        )
    return A, num_matvecs // 2


def leave_one_out_basis(
    A: LinearOperator, num_vectors: int, distribution: str, generator: torch.Generator
) -> LeaveOneOutBasis:
    """Draw ``Ω ∈ ℝⁿˣᵐ``, multiply once, and compute ``Q``, ``R`` and ``S``.

    Raises:
        RuntimeError: If ``A Ω`` is numerically rank deficient (``A`` has rank below ``m``).
    """
    Omega = random_block(A.shape[0], num_vectors, distribution, generator, working_dtype(A), A.device)
    Y = A.matmat(Omega)
    Q, R = torch.linalg.qr(Y)
    identity = torch.eye(num_vectors, dtype=R.dtype, device=R.device)
    S = torch.linalg.solve_triangular(R, identity, upper=True).T
    S = S / torch.linalg.vector_norm(S, dim=0, keepdim=True)
    if not bool(torch.isfinite(S).all()):
        raise RuntimeError(
            f"A Ω is rank deficient: the operator's rank is below the {num_vectors} test vectors; "
            "use fewer products (or Hutch++, which does not need full rank)."
        )
    return LeaveOneOutBasis(Omega, Y, Q, R, S)


def columnwise_dot(X: Tensor, Y: Tensor) -> Tensor:
    """``[x_iᵀ y_i]_i`` for the columns of two equally shaped matrices."""
    return (X * Y).sum(dim=0)
