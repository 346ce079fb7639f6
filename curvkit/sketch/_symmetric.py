r"""Recoveries of a symmetric operator's eigendecomposition from its sketch ``Y = A Ω``.

Each takes the sketch as rows (``[k, n]``, consumed: it becomes the eigenvectors, in place) and
returns the eigenvalues. All have the form :math:`\mathbf{A} \approx \mathbf{Q}\mathbf{C}\mathbf{Q}^\top`
with :math:`\mathbf{Q}` an orthonormal basis of :math:`\mathrm{range}(\mathbf{Y})` and a
symmetrized ``k × k`` core :math:`\mathbf{C}`, whose eigenvectors rotate :math:`\mathbf{Q}`:

- HMT (Halko, Martinsson & Tropp 2011, Alg. 5.3): :math:`\mathbf{C} = \mathbf{Q}^\top\mathbf{A}\mathbf{Q}`,
  a second pass over the operator;
- single pass (ibid. §5.5): :math:`\mathbf{C}\,(\mathbf{Q}^\top\boldsymbol\Omega) \approx
  \mathbf{Q}^\top\mathbf{Y}` in the least-squares sense;
- Nyström, PSD: the shifted, stable form of Tropp, Yurtsever, Udell & Cevher (2017, Alg. 3);
- Nyström, indefinite: :math:`\mathbf{Y}(\boldsymbol\Omega^\top\mathbf{Y})_S^\dagger\mathbf{Y}^\top`
  with the core's terms that would exceed the operator's size dropped (Nakatsukasa & Park 2023);
- oversampled: an independent core sketch :math:`\boldsymbol\Psi^\top\mathbf{A}\boldsymbol\Phi`
  with more columns than :math:`\mathbf{Q}` (Tropp et al. 2017, §4; skerch's ``oversampled_<N>``).

With :math:`\mathbf{Y} = \mathbf{Q}\mathbf{R}`, :math:`\mathbf{Q}^\top\mathbf{Y} = \mathbf{R}` and
:math:`\boldsymbol\Omega^\top\mathbf{Y} = (\mathbf{Q}^\top\boldsymbol\Omega)^\top\mathbf{R}`: the
single-pass and Nyström cores need one more product of the basis with :math:`\boldsymbol\Omega`
(drawn again), no operator product.

Halko, N., Martinsson, P.-G., & Tropp, J. A. (2011). Finding structure with randomness.
SIAM Review, 53(2). Tropp, J. A., Yurtsever, A., Udell, M., & Cevher, V. (2017). Fixed-rank
approximation of a positive-semidefinite matrix from streaming data. NeurIPS. Nakatsukasa, Y.,
& Park, T. (2023). Randomized low-rank approximation for symmetric indefinite matrices. SIAM
Journal on Matrix Analysis and Applications, 44(3).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from curvkit.linalg._dots import norms, row_dots
from curvkit.linalg._orthonormal import orthonormalize_rows_, preconditioned_rows_
from curvkit.linear_operator import LinearOperator
from curvkit.sketch._measurements import MeasurementMatrix, blocks, entry_variance, measured_rows, projected
from curvkit.sketch._small import pinv, rotate_rows_, sorted_eigh, symmetrized

CORE_BLOCKS = 8
"""Blocks of ``A Q``'s columns in :func:`rayleigh_ritz_core` (at most; 9/16 of a full matrix product)."""


def rayleigh_ritz_core(A: LinearOperator, Q_rows: Tensor, width: int, widen: bool) -> Tensor:
    r"""``Qᵀ A Q`` for a basis given as rows ``Qᵀ``, ``width`` products at a time.

    ``A Q`` is never held whole: it is formed in blocks of ``width`` columns, or with ``widen``
    (no bound on the columns set by the caller) of ``max(width, k / CORE_BLOCKS)`` columns
    (products still ``width`` at a time), which keeps the matrix products efficient where the
    products are narrow. Each block is reduced at once, and only its rows at and below the
    diagonal are formed (about half the matrix products), the upper triangle mirrored from them.
    """
    k = Q_rows.shape[0]
    step = max(width, -(-k // CORE_BLOCKS)) if widen else width
    C = Q_rows.new_zeros(k, k)
    for start in range(0, k, step):
        stop = min(start + step, k)
        C[start:, start:stop] = Q_rows[start:] @ applied_rows(A, Q_rows[start:stop], width).T
    lower = C.tril()
    return (lower + lower.T) - torch.diag_embed(lower.diagonal())


def applied_rows(A: LinearOperator, rows: Tensor, width: int) -> Tensor:
    """``(A X)ᵀ`` for ``X = rows.T``, ``width`` products at a time (a power iteration's pass)."""
    result = torch.empty_like(rows)
    for start in range(0, rows.shape[0], width):
        result[start : start + width] = A.matmat(rows[start : start + width].T).T
    return result


def well_conditioned_basis_(Y_rows: Tensor) -> Tensor:
    r"""Make ``Y_rows`` a well-conditioned basis ``X`` of its span, in place; return ``R₂``, ``XᵀX = R₂ᵀR₂``.

    Randomized preconditioning (:func:`~curvkit.linalg._orthonormal.preconditioned_rows_`, one
    triangular solve) and the basis' Gram matrix, whose Cholesky factor :math:`\mathbf{R}_2`
    the Rayleigh–Ritz step folds into its small matrices instead of solving with it over ``n``:
    :math:`\mathbf{Q} = \mathbf{X}\mathbf{R}_2^{-1}` is never formed. Where the Gram matrix is
    not safely factorizable (an embedding that failed), the basis is orthonormalized
    (Householder) and ``R₂ = I``.
    """
    k = Y_rows.shape[0]
    if 2 * k >= Y_rows.shape[1]:  # not wide: an embedding would not be smaller
        orthonormalize_rows_(Y_rows)
        return torch.eye(k, dtype=Y_rows.dtype, device=Y_rows.device)
    preconditioned_rows_(Y_rows)
    gram = row_dots(Y_rows, Y_rows)
    R2, info = torch.linalg.cholesky_ex(gram, upper=True)
    diagonal = R2.diagonal().abs()
    if (
        int(info) != 0
        or not bool(torch.isfinite(R2).all())
        or float(diagonal.max() / diagonal.min()) > MAX_BASIS_CONDITION
    ):
        orthonormalize_rows_(Y_rows)
        return torch.eye(k, dtype=Y_rows.dtype, device=Y_rows.device)
    return R2.to(Y_rows.dtype)


MAX_BASIS_CONDITION = 1e3
"""Largest ratio of ``R₂``'s diagonal entries (an estimate of the basis' condition) folded into the core."""


def hmt(
    A: LinearOperator, Y_rows: Tensor, width: int, widen: bool, by_mag: bool, power_iters: int
) -> tuple[Tensor, Tensor]:
    r"""HMT with ``power_iters`` subspace iterations ``Q ← orth(A Q)`` before the Rayleigh–Ritz step.

    ``widen``: the core may take ``A Q`` in blocks wider than ``width`` (:func:`rayleigh_ritz_core`).

    The last basis :math:`\mathbf{X}` is only well conditioned (:func:`well_conditioned_basis_`);
    with :math:`\mathbf{Q} = \mathbf{X}\mathbf{R}_2^{-1}`, the core is
    :math:`\mathbf{R}_2^{-\top}(\mathbf{X}^\top\mathbf{A}\mathbf{X})\mathbf{R}_2^{-1}` and the
    eigenvectors :math:`\mathbf{X}(\mathbf{R}_2^{-1}\mathbf{V})`.
    """
    X_rows = Y_rows
    for _ in range(power_iters):
        orthonormalize_rows_(X_rows)
        X_rows = applied_rows(A, X_rows, width)
    R2 = well_conditioned_basis_(X_rows)
    core = rayleigh_ritz_core(A, X_rows, width, widen)
    core = torch.linalg.solve_triangular(R2, core, upper=True, left=False)  # X'AX R₂⁻¹
    core = torch.linalg.solve_triangular(R2.T, core, upper=False)  # R₂⁻ᵀ X'AX R₂⁻¹
    values, V = sorted_eigh(core, by_mag)
    return values, rotate_rows_(X_rows, torch.linalg.solve_triangular(R2, V, upper=True))


def singlepass(
    Y_rows: Tensor, omega: MeasurementMatrix, width: int, rcond: float, by_mag: bool
) -> tuple[Tensor, Tensor]:
    """One pass: the core ``C = R (QᵀΩ)⁺`` solves ``C QᵀΩ ≈ QᵀY`` with ``rcond``."""
    Q_rows = Y_rows
    R = orthonormalize_rows_(Q_rows).to(Q_rows.dtype)
    C = R @ pinv(projected(Q_rows, omega, width), rcond)
    values, V = sorted_eigh(symmetrized(C), by_mag)
    return values, rotate_rows_(Q_rows, V)


TERM_BOUND = 3.0
"""Nyström terms ``(Y v)(Y v)ᵀ / θ`` larger than this times the estimate of ``‖A‖_F`` are dropped."""


def truncated_core(R: Tensor, W: Tensor, rcond: float, norm_estimate: float) -> Tensor:
    r"""``R W_S⁺ Rᵀ``: Nyström's core in the basis ``Q`` of ``Y = Q R``, with ``W = Ωᵀ Y`` truncated.

    With ``W = V Θ Vᵀ``, the approximation is a sum of rank-one terms
    :math:`(\mathbf{Y}\mathbf{v}_i)(\mathbf{Y}\mathbf{v}_i)^\top / \theta_i`. A term that comes from
    the operator has norm :math:`\|\mathbf{Y}\mathbf{v}_i\|^2 / |\theta_i| \le \|\mathbf{A}\|_2`
    (for :math:`\mathbf{A} = \lambda\mathbf{u}\mathbf{u}^\top` it is :math:`|\lambda|`); one whose
    :math:`\theta_i` is small by cancellation of positive and negative parts is larger, without
    bound. The set ``S`` keeps the terms of norm at most ``TERM_BOUND · norm_estimate`` (an estimate
    of :math:`\|\mathbf{A}\|_F`) with :math:`|\theta_i| > \text{rcond} \cdot \max|\theta|`, so the
    approximation's norm is bounded by ``k · TERM_BOUND`` times the operator's.
    """
    theta, V = torch.linalg.eigh(symmetrized(W))
    RV = R @ V
    term_norms = RV.square().sum(0) / theta.abs().clamp(min=torch.finfo(theta.dtype).tiny)
    keep = (theta.abs() > rcond * theta.abs().max()) & (term_norms <= TERM_BOUND * norm_estimate)
    return (RV[:, keep] / theta[keep]) @ RV[:, keep].T


def norm_estimate(Y_rows: Tensor, omega: MeasurementMatrix) -> float:
    """``‖A‖_F`` estimated from the sketch: ``‖A Ω‖_F / (k E[ω²])^{1/2}``."""
    return float(norms(Y_rows).square().sum().sqrt()) / math.sqrt(Y_rows.shape[0] * entry_variance(omega))


def nystrom_indefinite(
    Y_rows: Tensor, omega: MeasurementMatrix, width: int, rcond: float, by_mag: bool
) -> tuple[Tensor, Tensor]:
    r"""Nyström with a truncated core: ``A ≈ Q R W_S⁺ Rᵀ Qᵀ``, ``W = Ωᵀ A Ω`` (:func:`truncated_core`).

    The core of an indefinite operator can have eigenvalues near zero however well :math:`\mathbf{A}`
    is captured (positive and negative parts cancel), and its plain pseudo-inverse then amplifies
    the sketch's error without bound (Nakatsukasa & Park 2023; 100 seeds, ``k = 20``: up to 96 times
    ``‖A‖_F``); the terms that such eigenvalues produce are dropped.
    """
    estimate = norm_estimate(Y_rows, omega)
    Q_rows = Y_rows
    R = orthonormalize_rows_(Q_rows).to(Q_rows.dtype)
    core = truncated_core(R, projected(Q_rows, omega, width).T @ R, rcond, estimate)
    values, V = sorted_eigh(core, by_mag)
    return values, rotate_rows_(Q_rows, V)


def nystrom_psd(
    Y_rows: Tensor, omega: MeasurementMatrix, width: int, rcond: float, by_mag: bool
) -> tuple[Tensor, Tensor]:
    r"""Nyström of a PSD operator, shifted for stability (Tropp et al. 2017, Alg. 3).

    :math:`\mathbf{Y}_\nu = \mathbf{Y} + \nu\boldsymbol\Omega` sketches :math:`\mathbf{A} + \nu\mathbf{I}`,
    whose core :math:`\mathbf{B} = \boldsymbol\Omega^\top\mathbf{Y}_\nu = \mathbf{L}\mathbf{L}^\top`
    is positive definite;
    :math:`\mathbf{A} + \nu\mathbf{I} \approx \mathbf{Q}\mathbf{K}\mathbf{K}^\top\mathbf{Q}^\top`
    with :math:`\mathbf{K} = \mathbf{R}\mathbf{L}^{-\top}`, and the eigenvalues are
    :math:`\max(\sigma_i(\mathbf{K})^2 - \nu, 0)`. The shift
    :math:`\nu = \sqrt{n}\,\varepsilon\,\|\mathbf{A}\|_F` (estimated from the sketch, an upper
    estimate of Tropp et al.'s :math:`\|\mathbf{A}\|_2`) is the rounding
    level of the products. Where the core is not positive definite after all (an operator
    tagged PSD that is not), the indefinite form is used, with a warning.
    """
    estimate = norm_estimate(Y_rows, omega)
    nu = math.sqrt(Y_rows.shape[1]) * torch.finfo(Y_rows.dtype).eps * estimate
    for start, block in blocks(omega, width):
        Y_rows[start : start + block.shape[1]].add_(block.T, alpha=nu)
    Q_rows = Y_rows
    R = orthonormalize_rows_(Q_rows).to(Q_rows.dtype)
    L, info = torch.linalg.cholesky_ex(symmetrized(projected(Q_rows, omega, width).T @ R))
    if int(info) != 0:
        warnings.warn(
            "recovery_type='nystrom': the operator is tagged positive semi-definite, but its sketched "
            "core is not; using the form for indefinite operators.",
            stacklevel=4,
        )
        core = truncated_core(R, projected(Q_rows, omega, width).T @ R, rcond, estimate)
        values, V = sorted_eigh(core, by_mag)
        return values, rotate_rows_(Q_rows, V)
    K = torch.linalg.solve_triangular(L.T, R, upper=True, left=False)
    W, S, _ = torch.linalg.svd(K)
    return (S.square() - nu).clamp_(min=0), rotate_rows_(Q_rows, W)


def oversampled(
    A: LinearOperator,
    Y_rows: Tensor,
    phi: MeasurementMatrix,
    psi: MeasurementMatrix,
    width: int,
    rcond: float,
    by_mag: bool,
) -> tuple[Tensor, Tensor]:
    r"""The core from an independent, larger sketch: ``C = (Ψᵀ Q)⁺ (Ψᵀ A Φ) (Qᵀ Φ)⁺``.

    ``Φ`` and ``Ψ`` have ``N ≥ k`` columns each and are independent of each other and of ``Ω``;
    the ``N`` products ``A Φ`` are the only ones after the sketch.
    """
    Q_rows = Y_rows
    orthonormalize_rows_(Q_rows)
    core_sketch = projected(measured_rows(A, phi, width), psi, width).T  # Ψᵀ A Φ, [N, N]
    left = projected(Q_rows, psi, width).T  # Ψᵀ Q, [N, k]
    right = projected(Q_rows, phi, width)  # Qᵀ Φ, [k, N]
    C = pinv(left, rcond) @ core_sketch @ pinv(right, rcond)
    values, V = sorted_eigh(symmetrized(C), by_mag)
    return values, rotate_rows_(Q_rows, V)
