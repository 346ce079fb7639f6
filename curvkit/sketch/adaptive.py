r"""A sketch that grows until its a-posteriori error meets a target: :func:`adaptive_seigh`.

The randomized range finder in blocks (Halko, Martinsson & Tropp 2011, §4.4; Martinsson & Voronin
2016) with HMT's Rayleigh–Ritz core, kept up to date as the basis grows: each block of
``block_dims`` random vectors is measured, orthogonalized against the basis (twice, block
Gram–Schmidt, then orthonormalized), and multiplied once more to extend the core
:math:`\mathbf{C} = \mathbf{Q}^\top\mathbf{A}\mathbf{Q}` by its new columns. The error of
:math:`\hat{\mathbf{A}} = \mathbf{Q}\mathbf{C}\mathbf{Q}^\top` is estimated after each block from
``num_test`` Gaussian test vectors measured once at the start (:mod:`curvkit.sketch.error`):
:math:`\hat{\mathbf{A}}\mathbf{T} = \mathbf{Q}(\mathbf{C}(\mathbf{Q}^\top\mathbf{T}))` costs no
product. The sketch stops at the first block whose estimated relative error
:math:`\|\mathbf{A} - \hat{\mathbf{A}}\|_F / \|\mathbf{A}\|_F` is at most ``rel_err``.

Martinsson, P.-G., & Voronin, S. (2016). A randomized blocked algorithm for efficiently computing
rank-revealing factorizations of matrices. SIAM J. Sci. Comput., 38(5).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from curvkit._boundary import as_integer
from curvkit.linalg._dots import column_dots
from curvkit.linalg._operator import finite_float
from curvkit.linalg._orthonormal import orthonormalize_rows_
from curvkit.linalg._progress import product_progress
from curvkit.linalg._random import RandomColumns, Seed, purpose_generator
from curvkit.sketch._measurements import check_noise_type, measured_rows, measurement_matrix
from curvkit.sketch._operator import block_width, check_outer_dims, sketch_operator
from curvkit.sketch._results import EighResult
from curvkit.sketch._small import rotate_rows_, sorted_eigh, symmetrized
from curvkit.sketch.eigh import DEFAULT_SEED


def _orthogonalized_(new_rows: Tensor, Q_rows: Tensor) -> Tensor:
    """``new_rows`` made orthonormal and orthogonal to ``Q_rows`` (two rounds of block Gram–Schmidt)."""
    for _ in range(2):
        if Q_rows.shape[0]:
            new_rows.sub_((new_rows @ Q_rows.T) @ Q_rows)
        orthonormalize_rows_(new_rows)
    return new_rows


def adaptive_seigh(
    lop: Any,
    lop_device: Any,
    lop_dtype: Any,
    rel_err: float,
    max_dims: int,
    *,
    block_dims: int = 64,
    num_test: int = 30,
    seed: Seed = DEFAULT_SEED,
    noise_type: str = "rademacher",
    meas_blocksize: int | None = None,
    by_mag: bool = True,
    progressbar: bool = False,
) -> EighResult:
    r"""Eigendecomposition of a symmetric operator with a sketch grown until ``rel_err`` is certified.

    Products: ``num_test`` once, then ``2 · block_dims`` per block (HMT's two passes), at most
    ``num_test + 2 · max_dims``. Memory: the basis (``[k, n]``), the test vectors and their
    products (``2 · num_test`` vectors) and the ``k × k`` core.

    The stopping test reads the same test vectors after every block, so the returned estimate has
    been selected by the stopping rule; for a certificate that is independent of it, run
    :func:`~curvkit.sketch.apost_error` on the result with a fresh seed (the spread of both follows
    :func:`~curvkit.sketch.apost_error_bounds`).

    Args:
        lop: Symmetric operator ``[n, n]`` (see :func:`~curvkit.sketch.seigh`).
        lop_device: Its device.
        lop_dtype: Its dtype, ``torch.float32`` or ``torch.float64`` (float16 and bfloat16
            operators are sketched in float32).
        rel_err: Target for the estimated ``‖A - Â‖_F / ‖A‖_F``, in ``(0, 1)``.
        max_dims: Most basis vectors (``≤ n``): the sketch stops there whatever its error.
        block_dims: Basis vectors added per step.
        num_test: Gaussian test vectors of the error estimate.
        seed: ``int``, ``torch.Generator`` or ``None``; the sketch and the test take independent streams.
        noise_type: ``'rademacher'``, ``'gaussian'`` or ``'ssrft'``, for the sketch.
        meas_blocksize: Columns per product (``None``: the operator's limit, else
            2²¹ entries' worth, 1 to 256).
        by_mag: Sort by descending magnitude (else value).
        progressbar: Show one progress bar for the run, counting products.

    Returns:
        ``(eigenvalues, eigenvectors)`` with ``k`` pairs (a multiple of ``block_dims``, or
        ``max_dims``), and ``.num_products``, ``.rel_err`` (the last estimate) and ``.outer_dims`` (``k``).

    Raises:
        ValueError: If ``lop`` is not square, ``rel_err`` is not in ``(0, 1)``, or a count is out of range.

    Example:
        >>> import torch
        >>> U = torch.linalg.qr(torch.randn(200, 5, dtype=torch.float64)).Q
        >>> A = (U * torch.tensor([5.0, 4.0, -3.0, 2.0, 1.0], dtype=torch.float64)) @ U.T
        >>> result = adaptive_seigh(A, "cpu", torch.float64, 1e-8, max_dims=64, block_dims=8)
        >>> result.outer_dims, result.rel_err < 1e-8, [round(float(e), 8) for e in result[0][:3]]
        (8, True, [5.0, 4.0, -3.0])
    """
    A = sketch_operator(lop, lop_device, lop_dtype)
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"adaptive_seigh needs a square, symmetric operator, got shape {tuple(A.shape)}.")
    n = A.shape[0]
    target = finite_float(rel_err, "rel_err")
    if not 0 < target < 1:
        raise ValueError(f"rel_err must lie in (0, 1), got {rel_err!r}.")
    max_dims = check_outer_dims(max_dims, A, "max_dims")
    block_dims = min(as_integer(block_dims, "block_dims", minimum=1), max_dims)
    num_test = as_integer(num_test, "num_test", minimum=1)
    check_noise_type(noise_type)
    omega = measurement_matrix(noise_type, n, max_dims, purpose_generator(seed, "sketch"), A.dtype, A.device)
    tests = RandomColumns(n, num_test, "normal", purpose_generator(seed, "error test"), A.dtype, A.device)
    width = block_width(A, meas_blocksize, max(block_dims, num_test))
    Q_rows = torch.empty(0, n, dtype=A.dtype, device=A.device)
    C = torch.empty(0, 0, dtype=A.dtype, device=A.device)
    with product_progress(A, progressbar, "adaptive_seigh", num_test + 2 * max_dims) as A:
        T = tests.block(0, num_test)
        AT = measured_rows(A, tests, width).T  # [n, s]
        norm_sq = float(column_dots(AT, AT).sum())
        estimate = math.inf
        while Q_rows.shape[0] < max_dims and estimate > target:
            start = Q_rows.shape[0]
            stop = min(start + block_dims, max_dims)
            new_rows = torch.cat(
                [A.matmat(omega.block(s, min(s + width, stop))).T for s in range(start, stop, width)]
            )
            Q_rows = torch.cat([Q_rows, _orthogonalized_(new_rows, Q_rows)])
            AQ_new = torch.cat(
                [A.matmat(Q_rows[s : min(s + width, stop)].T) for s in range(start, stop, width)], 1
            )
            column = Q_rows @ AQ_new  # [stop, b]: C's new columns
            grown = C.new_empty(stop, stop)
            grown[:start, :start] = C
            grown[:, start:] = column
            grown[start:, :start] = column[:start].T
            grown[start:, start:] = symmetrized(column[start:])
            C = grown
            residual = AT - Q_rows.T @ (C @ (Q_rows @ T))
            estimate = math.sqrt(float(column_dots(residual, residual).sum()) / max(norm_sq, 1e-300))
        values, V = sorted_eigh(C, by_mag)
    k = Q_rows.shape[0]
    return EighResult((values, rotate_rows_(Q_rows, V).T), num_test + 2 * k, rel_err=estimate, outer_dims=k)
