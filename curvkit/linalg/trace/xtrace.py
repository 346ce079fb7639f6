"""XTrace: the exchangeable Hutch++ (Epperly, Tropp & Webber, 2024)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from curvkit._pages import empty_block
from curvkit.linalg._dots import column_dots, row_dots
from curvkit.linalg._exchangeable import checked_half_budget, leave_one_out_basis
from curvkit.linalg._operator import working_dtype
from curvkit.linalg._progress import product_progress
from curvkit.linalg._random import Seed, as_generator


def xtrace(
    A: Any,
    num_matvecs: int,
    distribution: str = "rademacher",
    *,
    seed: Seed = None,
    progressbar: bool = False,
) -> Tensor:
    r"""Estimate :math:`\mathrm{Tr}(\mathbf{A})` with XTrace.

    Hutch++ spends its products on either the low-rank basis or the Hutchinson samples. XTrace
    uses every test vector for both: with :math:`m = \lfloor \text{num\_matvecs}/2 \rfloor`
    vectors :math:`\boldsymbol{\omega}_i`, it averages the :math:`m` Hutch++-type estimates that
    leave one vector out of the basis and use it for Hutchinson's estimator,

    .. math::
        \hat t = \frac{1}{m} \sum_{i=1}^m \Bigl[ \mathrm{Tr}(\mathbf{Q}_{(i)}^\top \mathbf{A}
        \mathbf{Q}_{(i)}) + \boldsymbol{\omega}_i^\top (\mathbf{I} - \mathbf{Q}_{(i)}
        \mathbf{Q}_{(i)}^\top) \mathbf{A} (\mathbf{I} - \mathbf{Q}_{(i)}\mathbf{Q}_{(i)}^\top)
        \boldsymbol{\omega}_i \Bigr],

    where :math:`\mathbf{Q}_{(i)}` is an orthonormal basis of :math:`\mathbf{A}\mathbf{\Omega}_{-i}`.
    Each term is unbiased, because :math:`\boldsymbol{\omega}_i` is independent of
    :math:`\mathbf{Q}_{(i)}`. With :math:`\mathbf{Y} = \mathbf{A}\mathbf{\Omega} = \mathbf{Q}
    \mathbf{R}`, :math:`\mathbf{Z} = \mathbf{A}\mathbf{Q}` and the downdating directions
    :math:`\mathbf{s}_i` of :mod:`curvkit.linalg._exchangeable`, all terms follow from
    :math:`m\times m` matrices, at a cost of :math:`2m` products (``Y`` and ``Z``).

    Memory: the basis :math:`\mathbf{Q}` (``m n`` numbers for ``A ∈ ℝⁿˣⁿ``), for an operator not
    declared symmetric also :math:`\mathbf{Z}` (another ``m n``), and one block of ``b`` vectors
    with its product and their entrywise product (``(m + 3 b) n`` in all for a symmetric
    operator, ``(2 m + 3 b) n`` for another), ``b = A.columns_per_product`` (``A.max_columns``)
    or all ``m``; the test vectors are drawn twice instead of kept.

    Epperly, E. N., Tropp, J. A., & Webber, R. J. (2024). XTrace: Making the most of every
    sample in stochastic trace estimation. SIAM Journal on Matrix Analysis and Applications.

    Args:
        A: Square operator of rank at least ``num_matvecs // 2``.
        num_matvecs: Number of products, at least 2 and at most ``2 · dim``; an odd budget
            uses ``num_matvecs - 1``.
        distribution: ``'rademacher'`` or ``'normal'``.
        seed: ``int``, ``torch.Generator`` or ``None``.
        progressbar: Show one progress bar for the run, counting products.

    Returns:
        The estimate as a 0-dimensional tensor on the operator's device.

    Raises:
        ValueError: If ``A`` is not square, ``num_matvecs`` is out of range, or ``distribution``
            is unknown.
        RuntimeError: If ``A`` has rank below ``num_matvecs // 2``.

    Example:
        >>> import torch
        >>> generator = torch.Generator().manual_seed(0)
        >>> U = torch.linalg.qr(torch.randn(50, 4, dtype=torch.float64, generator=generator)).Q
        >>> A = U @ torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)) @ U.T
        >>> round(float(xtrace(A, 10, seed=0)), 8)  # rank 4 = 10 // 2 - 1: exact
        10.0
    """
    A, m = checked_half_budget(A, num_matvecs, distribution, "XTrace")
    with product_progress(A, progressbar, "xtrace", 2 * m) as A:
        basis = leave_one_out_basis(A, m, distribution, as_generator(seed, A.device), diagonal=False)
        Q_rows, R, S, width = basis.Q_rows, basis.R, basis.S, basis.width
        H = torch.empty(m, m, dtype=torch.float64, device=A.device)  # Qᵀ A Q
        Z_rows = None if A.is_symmetric else empty_block(Q_rows.shape, Q_rows.dtype, A.device)  # (A Q)ᵀ
        for start in range(0, m, width):
            Z = A.matmat(Q_rows[start : start + width].T)
            H[:, start : start + Z.shape[1]] = row_dots(Q_rows, Z.T)
            if Z_rows is not None:
                Z_rows[start : start + Z.shape[1]] = Z.T
    # W = Qᵀ Ω and T = Zᵀ Ω (T[:, i] = Qᵀ Aᵀ ω_i), which is Qᵀ Y = R for a symmetric A
    W = torch.empty_like(H)
    T = R if Z_rows is None else torch.empty_like(H)
    for start, Omega in basis.Omega.blocks(width):
        W[:, start : start + Omega.shape[1]] = row_dots(Q_rows, Omega.T)
        if Z_rows is not None:
            T[:, start : start + Omega.shape[1]] = row_dots(Z_rows, Omega.T)
    HW, HS = H @ W, H @ S
    c = column_dots(S, W)
    # ω_iᵀ (I - P_i) A (I - P_i) ω_i with (I - P_i) ω_i = ω_i - Q w_i + c_i Q s_i, expanded:
    residual = (
        basis.omega_dot_y
        - column_dots(T, W)
        + c * column_dots(T, S)
        - column_dots(W, R)
        + column_dots(W, HW)
        - c * column_dots(W, HS)
        + c * column_dots(S, R)
        - c * column_dots(S, HW)
        + c**2 * column_dots(S, HS)
    )
    low_rank = H.trace() - column_dots(S, HS)
    return (low_rank + residual).mean().to(working_dtype(A))
