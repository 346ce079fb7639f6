"""XDiag: exchangeable diagonal estimation (Epperly, Tropp & Webber, 2024)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from curvkit._pages import empty_block
from curvkit.linalg._dots import column_dots, row_dots
from curvkit.linalg._exchangeable import checked_half_budget, leave_one_out_basis
from curvkit.linalg._operator import needs_transpose
from curvkit.linalg._progress import product_progress
from curvkit.linalg._random import Seed, as_generator


def xdiag(
    A: Any,
    num_matvecs: int,
    distribution: str = "rademacher",
    *,
    seed: Seed = None,
    progressbar: bool = False,
) -> Tensor:
    r"""Estimate :math:`\mathrm{diag}(\mathbf{A})` with XDiag.

    The diagonal analogue of :func:`~curvkit.linalg.xtrace`: with :math:`m = \lfloor
    \text{num\_matvecs}/2 \rfloor` test vectors and :math:`\mathbf{P}_{(i)} = \mathbf{Q}_{(i)}
    \mathbf{Q}_{(i)}^\top` the projector onto the range of :math:`\mathbf{A}\mathbf{\Omega}_{-i}`,

    .. math::
        \hat{\mathbf{d}} = \frac{1}{m} \sum_{i=1}^m \Bigl[ \mathrm{diag}(\mathbf{P}_{(i)}
        \mathbf{A}) + \boldsymbol{\omega}_i \odot (\mathbf{I} - \mathbf{P}_{(i)}) \mathbf{A}
        \boldsymbol{\omega}_i \Bigr],

    the exact diagonal of a low-rank approximation plus Hutchinson's diagonal estimator on the
    residual, each term unbiased. With :math:`\mathbf{Y} = \mathbf{A}\mathbf{\Omega} =
    \mathbf{Q}\mathbf{R}`, :math:`\mathbf{Z} = \mathbf{A}^\top\mathbf{Q}`,
    :math:`\mathbf{T} = \mathbf{Z}^\top\mathbf{\Omega}` and the downdating directions
    :math:`\mathbf{S}` (columns :math:`\mathbf{s}_i`),

    .. math::
        \hat{\mathbf{d}} = \mathrm{diag}(\mathbf{Q}\mathbf{Z}^\top) + \frac{1}{m}\mathrm{diag}\bigl(
        - \mathbf{Q}\mathbf{S}(\mathbf{Z}\mathbf{S})^\top + \mathbf{\Omega}\mathbf{Y}^\top
        - \mathbf{\Omega}(\mathbf{Q}\mathbf{T})^\top
        + \mathbf{\Omega}(\mathbf{Q}\mathbf{S}\,\mathrm{diag}(\mathbf{s}_i^\top\mathbf{t}_i))^\top\bigr),

    at a cost of :math:`m` products with :math:`\mathbf{A}` and :math:`m` with
    :math:`\mathbf{A}^\top` (the same for symmetric operators).

    Memory: :math:`\mathbf{Q}` and :math:`\mathbf{Z}` (``2 m n`` numbers for ``A ∈ ℝⁿˣⁿ``),
    three ``n``-vectors, and one block of ``b`` vectors with up to three ``[n, b]`` intermediates
    (``(2 m + 4 b + 3) n`` in all), ``b = A.columns_per_product`` (``A.max_columns``) or all
    ``m``; the test vectors are drawn twice instead of kept.

    Epperly, E. N., Tropp, J. A., & Webber, R. J. (2024). XTrace: Making the most of every
    sample in stochastic trace estimation. SIAM Journal on Matrix Analysis and Applications.

    Args:
        A: Square operator of rank at least ``num_matvecs // 2``. Needs products with ``Aᵀ``
            unless it is a curvkit operator declared symmetric (``A.is_symmetric``): a foreign
            object needs a ``.T`` (symmetry cannot be told from ``@`` alone).
        num_matvecs: Number of products, at least 2 and at most ``2 · dim``.
        distribution: ``'rademacher'`` or ``'normal'``.
        seed: ``int``, ``torch.Generator`` or ``None``.
        progressbar: Show one progress bar for the run, counting products.

    Returns:
        The ``[n]`` estimate as a tensor on the operator's device.

    Raises:
        ValueError: If ``A`` is not square, ``num_matvecs`` is out of range, or ``distribution``
            is unknown.
        TypeError: If ``A`` provides no products with ``Aᵀ`` (see ``A``).
        RuntimeError: If ``A`` has rank below ``num_matvecs // 2``.

    Example:
        >>> import torch
        >>> generator = torch.Generator().manual_seed(0)
        >>> U = torch.linalg.qr(torch.randn(50, 4, dtype=torch.float64, generator=generator)).Q
        >>> A = U @ torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)) @ U.T
        >>> torch.allclose(xdiag(A, 10, seed=0), A.diagonal())  # rank 4 = 10 // 2 - 1: exact
        True
    """
    A, m = checked_half_budget(A, num_matvecs, distribution, "XDiag")
    with product_progress(A, progressbar, "xdiag", 2 * m) as A:
        basis = leave_one_out_basis(A, m, distribution, as_generator(seed, A.device), diagonal=True)
        Q_rows, S, width = basis.Q_rows, basis.S, basis.width
        dtype = Q_rows.dtype
        Z_rows = empty_block(Q_rows.shape, dtype, A.device)  # (Aᵀ Q)ᵀ
        estimate = torch.zeros_like(basis.omega_times_y)  # m · diag(Q Zᵀ), then the corrections
        for start in range(0, m, width):
            Z = needs_transpose("xdiag", A.rmatmat, Q_rows[start : start + width].T)
            Z_rows[start : start + Z.shape[1]] = Z.T
            estimate += (Q_rows[start : start + Z.shape[1]] * Z.T).sum(dim=0)
    estimate *= m
    estimate += basis.omega_times_y  # diag(Ω Yᵀ)
    for start, Omega in basis.Omega.blocks(width):
        S_block = S[:, start : start + Omega.shape[1]]
        QS = (S_block.to(dtype).T @ Q_rows).T  # columns Q s_i
        estimate -= (QS * (S_block.to(dtype).T @ Z_rows).T).sum(dim=1)  # diag(Q S (Z S)ᵀ)
        T = row_dots(Z_rows, Omega.T)  # T[:, i] = Zᵀ ω_i
        QS *= column_dots(S_block, T).to(dtype)  # columns c_i Q s_i
        QS -= (T.to(dtype).T @ Q_rows).T  # columns c_i Q s_i - Q t_i
        estimate += (Omega * QS).sum(dim=1)
    return estimate / m
