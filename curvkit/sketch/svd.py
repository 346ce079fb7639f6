r"""Sketched SVD of any operator (a Jacobian, say): :func:`ssvd`.

Sketches from both sides, :math:`\mathbf{Y} = \mathbf{A}\boldsymbol\Omega` (``[m, k]``) and
:math:`\mathbf{W} = \mathbf{A}^\top\boldsymbol\Psi` (``[n, k]``, left products), with orthonormal
bases :math:`\mathbf{P}` of :math:`\mathbf{Y}` and :math:`\mathbf{Q}` of :math:`\mathbf{W}`;
each recovery gives :math:`\mathbf{A} \approx \mathbf{P}\mathbf{C}\mathbf{Q}^\top` with a small
core, whose SVD :math:`\mathbf{C} = \mathbf{X}\mathbf{S}\mathbf{Z}^\top` rotates the bases:
:math:`\mathbf{U} = \mathbf{P}\mathbf{X}`, :math:`\mathbf{V}^\top = \mathbf{Z}^\top\mathbf{Q}^\top`.

- HMT (Halko et al. 2011, Alg. 5.1): :math:`\mathbf{W} = \mathbf{A}^\top\mathbf{P}` (the second
  pass), so :math:`\mathbf{P}^\top\mathbf{A} = \mathbf{W}^\top = \mathbf{R}_W^\top\mathbf{Q}^\top`
  and :math:`\mathbf{C} = \mathbf{R}_W^\top`;
- single pass (Tropp et al. 2017, "Practical sketching algorithms", §4):
  :math:`\mathbf{A} \approx \mathbf{Y}(\mathbf{Q}^\top\boldsymbol\Omega)^\dagger\mathbf{Q}^\top`;
- generalized Nyström (Nakatsukasa 2020): :math:`\mathbf{A} \approx \mathbf{Y}(\boldsymbol\Psi^\top
  \mathbf{Y})^\dagger_\epsilon\mathbf{W}^\top`, with :math:`\boldsymbol\Psi^\top\mathbf{Y} =
  \mathbf{R}_W^\top\,\mathbf{Q}^\top\boldsymbol\Omega`;
- oversampled: :math:`\mathbf{C} = (\boldsymbol\Psi_i^\top\mathbf{P})^\dagger\,\boldsymbol\Psi_i^\top
  \mathbf{A}\boldsymbol\Phi_i\,(\mathbf{Q}^\top\boldsymbol\Phi_i)^\dagger` from an independent
  inner sketch.

Nakatsukasa, Y. (2020). Fast and stable randomized low-rank matrix approximation. arXiv:2009.11392.
Tropp, J. A., Yurtsever, A., Udell, M., & Cevher, V. (2017). Practical sketching algorithms for
low-rank matrix approximation. SIAM J. Matrix Anal. Appl., 38(4).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from curvkit._boundary import nonnegative_float
from curvkit.linalg._orthonormal import orthonormalize_rows_
from curvkit.linalg._progress import product_progress
from curvkit.linalg._random import Seed, purpose_generator
from curvkit.linear_operator import LinearOperator
from curvkit.sketch._measurements import check_noise_type, measured_rows, measurement_matrix, projected
from curvkit.sketch._operator import block_width, check_outer_dims, parse_recovery_type, sketch_operator
from curvkit.sketch._results import SVDResult
from curvkit.sketch._small import pinv, rotate_rows_
from curvkit.sketch.eigh import DEFAULT_SEED


def _transposed_rows(A: LinearOperator, rows: Tensor, width: int) -> Tensor:
    """``(Aᵀ X)ᵀ`` for ``X = rows.T``, ``width`` left products at a time."""
    result = rows.new_empty(rows.shape[0], A.shape[1])
    for start in range(0, rows.shape[0], width):
        result[start : start + width] = A.rmatmat(rows[start : start + width].T).T
    return result


def _factored(P_rows: Tensor, C: Tensor, Q_rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``U, S, Vh`` of ``P C Qᵀ`` for orthonormal rows ``Pᵀ``, ``Qᵀ``: the bases rotated in place."""
    X, S, Zt = torch.linalg.svd(C)
    return rotate_rows_(P_rows, X).T, S, rotate_rows_(Q_rows, Zt.T)


def ssvd(
    lop: Any,
    lop_device: Any,
    lop_dtype: Any,
    outer_dims: int,
    seed: Seed = DEFAULT_SEED,
    noise_type: str = "rademacher",
    recovery_type: str = "hmt",
    lstsq_rcond: float = 1e-6,
    meas_blocksize: int | None = None,
    *,
    progressbar: bool = False,
) -> SVDResult:
    r"""Thin SVD ``A ≈ U diag(s) Vᵀ`` of any operator from random measurements.

    ``k = outer_dims`` measurements from each side (``'hmt'``: the left ones on the basis of the
    right ones), ``N`` more for ``'oversampled_<N>'``: ``2k`` products, ``2k + N`` for the
    oversampled recovery. Products from the left go through ``lop``'s transpose (``X @ lop`` for
    foreign operators). See the module for the recoveries and :func:`~curvkit.sketch.seigh` for
    the arguments they share.

    Args:
        lop: Operator ``[m, n]``: a curvkit operator, tensor, or any object with ``.shape`` and
            ``@`` (both sides) that multiplies torch tensors.
        lop_device: The device ``lop`` computes on.
        lop_dtype: Its dtype, ``torch.float32`` or ``torch.float64`` (float16 and bfloat16
            operators are sketched in float32).
        outer_dims: ``k ≤ min(m, n)``: measurements per side and singular triplets returned.
        seed: ``int``, ``torch.Generator`` or ``None``.
        noise_type: ``'rademacher'``, ``'gaussian'`` or ``'ssrft'``.
        recovery_type: ``'hmt'``, ``'nystrom'``, ``'singlepass'`` or ``'oversampled_<N>'``
            (``k ≤ N ≤ min(m, n)``).
        lstsq_rcond: Relative threshold of the recoveries' pseudo-inverses.
        meas_blocksize: Columns per product (``None``: the operator's limit, else
            2²¹ entries' worth, 1 to 256).
        progressbar: Show one progress bar for the run, counting products.

    Returns:
        ``(U, S, Vh)``: ``[m, k]``, ``[k]`` (descending), ``[k, n]``, with ``.num_products``.

    Raises:
        ValueError: If ``outer_dims`` exceeds ``min(m, n)``, ``noise_type`` or ``recovery_type``
            is unknown, or ``lop`` has another dtype or device.
        TypeError: If ``lop`` has no ``.shape`` and ``@``, or ``lop_dtype`` is not a float dtype.

    Example:
        >>> import torch
        >>> A = torch.outer(torch.arange(1.0, 6.0, dtype=torch.float64), torch.ones(8, dtype=torch.float64))
        >>> U, S, Vh = ssvd(A, "cpu", torch.float64, 3, seed=0)
        >>> round(float(S[0]) ** 2, 6), float(S[1]) < 1e-12  # ‖(1..5)‖² · 8, rank one
        (440.0, True)
    """
    A = sketch_operator(lop, lop_device, lop_dtype)
    (m, n), k = A.shape, check_outer_dims(outer_dims, A)
    check_noise_type(noise_type)
    kind, inner_dims = parse_recovery_type(recovery_type, k, min(m, n))
    rcond = nonnegative_float(lstsq_rcond, "lstsq_rcond")
    generator = purpose_generator(seed, "sketch")
    omega = measurement_matrix(noise_type, n, k, generator, A.dtype, A.device)
    width = block_width(A, meas_blocksize, max(k, inner_dims))
    with product_progress(A, progressbar, "ssvd", 2 * k + inner_dims) as A:
        P_rows = measured_rows(A, omega, width)  # Yᵀ
        if kind == "hmt":
            orthonormalize_rows_(P_rows)
            Q_rows = _transposed_rows(A, P_rows, width)  # (Aᵀ P)ᵀ = Pᵀ A
            C = orthonormalize_rows_(Q_rows).to(A.dtype).T
        else:
            psi = measurement_matrix(noise_type, m, k, generator, A.dtype, A.device)
            Q_rows = measured_rows(A, psi, width, transpose=True)  # Wᵀ = Ψᵀ A
            R_W = orthonormalize_rows_(Q_rows).to(A.dtype)
            M = projected(Q_rows, omega, width)  # Qᵀ Ω
            R_Y = orthonormalize_rows_(P_rows).to(A.dtype)
            if kind == "singlepass":
                C = R_Y @ pinv(M, rcond)
            elif kind == "nystrom":
                C = R_Y @ pinv(R_W.T @ M, rcond) @ R_W.T
            else:
                phi = measurement_matrix(noise_type, n, inner_dims, generator, A.dtype, A.device)
                psi_inner = measurement_matrix(noise_type, m, inner_dims, generator, A.dtype, A.device)
                core_sketch = projected(measured_rows(A, phi, width), psi_inner, width).T  # Ψᵢᵀ A Φᵢ
                left, right = projected(P_rows, psi_inner, width).T, projected(Q_rows, phi, width)
                C = pinv(left, rcond) @ core_sketch @ pinv(right, rcond)
        U, S, Vh = _factored(P_rows, C, Q_rows)
    return SVDResult((U, S, Vh), 2 * k + inner_dims)
