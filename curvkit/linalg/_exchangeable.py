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

Neither :math:`\mathbf{\Omega}` nor :math:`\mathbf{Y}` is kept: :math:`\mathbf{\Omega}` is drawn
in blocks (and again where an estimator needs it twice), :math:`\mathbf{Y}` is orthonormalized in
place, and what the estimators need of :math:`\mathbf{\Omega}^\top\mathbf{Y}` is reduced block by
block. The small ``m × m`` matrices are float64.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from curvkit._boundary import as_integer
from curvkit._pages import empty_block
from curvkit.linalg._dots import column_dots
from curvkit.linalg._operator import square_operator, working_dtype
from curvkit.linalg._orthonormal import orthonormalize_rows_
from curvkit.linalg._random import RandomColumns, block_width, check_distribution
from curvkit.linear_operator import LinearOperator


class LeaveOneOutBasis(NamedTuple):
    """What the exchangeable estimators keep of ``Ω`` and ``Y = A Ω = Q R``.

    Attributes:
        Omega: The test vectors, drawn again block by block when needed.
        Q_rows: ``Qᵀ`` (``[m, n]``): the orthonormal basis as rows.
        R: ``[m, m]`` upper triangular, float64.
        S: The downdating directions ``s_i`` as columns, float64.
        omega_dot_y: ``[ω_iᵀ y_i]_i`` (``[m]``, float64).
        omega_times_y: ``Σ_i ω_i ⊙ y_i`` (``[n]``), if asked for.
        width: Columns per block of products.
    """

    Omega: RandomColumns
    Q_rows: Tensor
    R: Tensor
    S: Tensor
    omega_dot_y: Tensor
    omega_times_y: Tensor | None
    width: int


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
    A: LinearOperator, num_vectors: int, distribution: str, generator: torch.Generator, *, diagonal: bool
) -> LeaveOneOutBasis:
    """Draw ``Ω ∈ ℝⁿˣᵐ`` in blocks, multiply each, and compute ``Q``, ``R`` and ``S``.

    ``omega_times_y`` is computed only if ``diagonal`` (else ``None``). Memory: ``Q`` (``m n``
    numbers), one block of ``b`` vectors with its product and their entrywise product, and
    ``omega_times_y`` with one more ``n``-vector: ``(m + 3 b + 2) n``.

    Raises:
        RuntimeError: If ``A Ω`` is numerically rank deficient (``A`` has rank below ``m``).
    """
    dtype, n = working_dtype(A), A.shape[0]
    Omega = RandomColumns(n, num_vectors, distribution, generator, dtype, A.device)
    width = block_width(A, num_vectors)
    rows = empty_block((num_vectors, n), dtype, A.device)  # Yᵀ, then Qᵀ
    omega_dot_y = torch.empty(num_vectors, dtype=torch.float64, device=A.device)
    omega_times_y = torch.zeros(n, dtype=dtype, device=A.device) if diagonal else None
    for start, block in Omega.blocks(width):
        Y = A.matmat(block)
        rows[start : start + Y.shape[1]] = Y.T
        omega_dot_y[start : start + Y.shape[1]] = column_dots(block, Y)
        if omega_times_y is not None:
            omega_times_y += (block * Y).sum(dim=1)
        del block, Y  # before the next block is drawn
    R = orthonormalize_rows_(rows)
    identity = torch.eye(num_vectors, dtype=R.dtype, device=R.device)
    S = torch.linalg.solve_triangular(R, identity, upper=True).T
    S = S / torch.linalg.vector_norm(S, dim=0, keepdim=True)
    if not bool(torch.isfinite(S).all()):
        raise RuntimeError(
            f"A Ω is rank deficient: the operator's rank is below the {num_vectors} test vectors; "
            "use fewer products (or Hutch++, which does not need full rank)."
        )
    return LeaveOneOutBasis(Omega, rows, R, S, omega_dot_y, omega_times_y, width)
