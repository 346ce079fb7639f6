"""XTrace: the exchangeable Hutch++ (Epperly, Tropp & Webber, 2024)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from curvkit.linalg._exchangeable import checked_half_budget, columnwise_dot, leave_one_out_basis
from curvkit.linalg._random import Seed, as_generator


def xtrace(A: Any, num_matvecs: int, *, distribution: str = "rademacher", seed: Seed = None) -> Tensor:
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

    Epperly, E. N., Tropp, J. A., & Webber, R. J. (2024). XTrace: Making the most of every
    sample in stochastic trace estimation. SIAM Journal on Matrix Analysis and Applications.

    Args:
        A: Square operator of rank at least ``num_matvecs // 2``.
        num_matvecs: Number of products, at least 2 and at most ``2 · dim``; an odd budget
            uses ``num_matvecs - 1``.
        distribution: ``'rademacher'`` or ``'normal'``.
        seed: ``int``, ``torch.Generator`` or ``None``.

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
    Omega, Y, Q, R, S = leave_one_out_basis(A, m, distribution, as_generator(seed, A.device))
    Z = A.matmat(Q)
    H, W, T = Q.T @ Z, Q.T @ Omega, Z.T @ Omega  # T[:, i] = Qᵀ Aᵀ ω_i
    HW, HS = H @ W, H @ S
    c = columnwise_dot(S, W)
    # ω_iᵀ (I - P_i) A (I - P_i) ω_i with (I - P_i) ω_i = ω_i - Q w_i + c_i Q s_i, expanded:
    residual = (
        columnwise_dot(Omega, Y)
        - columnwise_dot(T, W)
        + c * columnwise_dot(T, S)
        - columnwise_dot(W, R)
        + columnwise_dot(W, HW)
        - c * columnwise_dot(W, HS)
        + c * columnwise_dot(S, R)
        - c * columnwise_dot(S, HW)
        + c**2 * columnwise_dot(S, HS)
    )
    low_rank = H.trace() - columnwise_dot(S, HS)
    return (low_rank + residual).mean()
