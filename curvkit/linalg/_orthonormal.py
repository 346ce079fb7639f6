r"""Orthonormal bases of tall blocks, stored as rows, by CholeskyQR with float64 Gram matrices.

The randomized estimators orthonormalize blocks :math:`\mathbf{Y} \in \mathbb{R}^{n\times m}` with
:math:`n` up to :math:`10^7` and :math:`m` in the tens. Householder QR reads the block once per
column there; CholeskyQR (Fukaya et al., 2014) needs one Gram matrix
:math:`\mathbf{Y}^\top\mathbf{Y} = \mathbf{R}^\top\mathbf{R}` (a matrix product) and one
triangular solve :math:`\mathbf{Q} = \mathbf{Y}\mathbf{R}^{-1}` (in place). Its loss of
orthogonality grows with :math:`\kappa(\mathbf{Y})^2`, so it is repeated on its own output until
the Gram matrix it starts from is close to the identity (twice for every :math:`\mathbf{Y}` that
is well conditioned in its precision: CholeskyQR2). The Gram matrices are summed in float64
(``row_dots(..., exact=True)``), so that the first factorization holds for
:math:`\kappa(\mathbf{Y})` up to about :math:`10^7` and the inner products do not lose digits as
:math:`n` grows. A block that is still not factorizable (numerically rank deficient) falls back
to Householder QR.

Blocks that are not tall and skinny (more than :math:`n / 64` rows, the sketches of
:mod:`curvkit.sketch`: 2,000 rows of length 39,760) go to Householder QR directly (LAPACK's
blocked ``geqrf`` and ``orgqr``, in the block's dtype): there the float64 Gram matrices cost more
than the reflectors (measurements in ``docs/design-notes.md``, "Sketched decompositions"), and
Householder QR needs no retry on rank-deficient blocks.

Fukaya, T., Nakatsukasa, Y., Yanagisawa, Y., & Yamamoto, Y. (2014). CholeskyQR2: A simple and
communication-avoiding algorithm for computing a tall-skinny QR factorization on a large-scale
parallel system. Workshop on Latest Advances in Scalable Algorithms for Large-Scale Systems.
"""

from __future__ import annotations

import torch
from torch import Tensor

from curvkit.linalg._dots import row_dots

MAX_PASSES = 4
"""CholeskyQR passes before falling back to Householder QR."""

TALL_RATIO = 64
"""Blocks with more than ``n / TALL_RATIO`` rows of length ``n`` take Householder QR directly."""


def orthonormalize_rows_(rows: Tensor) -> Tensor:
    r"""Orthonormalize the rows of ``rows`` (``[m, n]``, the columns of ``Y``) in place; return ``R``.

    On return the rows are an orthonormal basis :math:`\mathbf{Q}^\top` of the rows' span with
    :math:`\mathbf{Y} = \mathbf{Q}\mathbf{R}` and :math:`\mathbf{R}` upper triangular, as a
    float64 ``[m, m]`` tensor. A pass stops the repetition once the Gram matrix of its input
    deviates from the identity by at most ``1/2`` (then its output is orthonormal to the
    working precision). Memory: the rows, plus a float64 slice of them (``row_dots``).

    Raises:
        ValueError: If ``rows`` has more rows than columns.
    """
    num_rows = rows.shape[0]
    if num_rows > rows.shape[1]:
        raise ValueError(f"Cannot orthonormalize {num_rows} vectors of length {rows.shape[1]}.")
    if num_rows * TALL_RATIO > rows.shape[1]:
        return householder_rows_(rows)
    identity = torch.eye(num_rows, dtype=torch.float64, device=rows.device)
    R = identity
    for _ in range(MAX_PASSES):
        G = row_dots(rows, rows, exact=True)
        factor, info = torch.linalg.cholesky_ex(G, upper=True)
        if int(info) != 0 or not bool(torch.isfinite(factor).all()):
            break
        torch.linalg.solve_triangular(factor.to(rows.dtype).T, rows, upper=False, out=rows)
        R = factor @ R
        if float((G - identity).abs().max()) <= 0.5:
            return R
    return householder_rows_(rows).double() @ R


def householder_rows_(rows: Tensor) -> Tensor:
    r"""Householder QR of the columns ``rows.T``, written back into ``rows``; return ``R`` (float64).

    ``rows.T`` of a row-major block is column-major, LAPACK's layout, so ``geqrf`` takes it
    without a transposing copy; the reflectors are expanded into :math:`\mathbf{Q}` by
    ``householder_product`` (``orgqr``). Memory: one more block of the rows' size.
    """
    reflectors, tau = torch.geqrf(rows.T)
    R = reflectors.triu()[: rows.shape[0]].double()
    rows.copy_(torch.linalg.householder_product(reflectors, tau).T)
    return R


def orthonormalized(X: Tensor) -> Tensor:
    """Orthonormal columns spanning those of ``X`` (``[n, p]``, full column rank), as a new tensor."""
    rows = X.T.contiguous()
    orthonormalize_rows_(rows)
    return rows.T
