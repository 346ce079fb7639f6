"""Sketched eigendecomposition of a symmetric operator: :func:`seigh`."""

from __future__ import annotations

from typing import Any

from curvkit._boundary import as_integer, nonnegative_float
from curvkit.linalg._progress import product_progress
from curvkit.linalg._random import Seed, purpose_generator
from curvkit.sketch import _symmetric
from curvkit.sketch._measurements import check_noise_type, measured_rows, measurement_matrix
from curvkit.sketch._operator import block_width, check_outer_dims, parse_recovery_type, sketch_operator
from curvkit.sketch._results import EighResult

DEFAULT_SEED = 0
"""The seed of a call that passes none: sketches are repeatable by default, as skerch's are."""


def seigh(
    lop: Any,
    lop_device: Any,
    lop_dtype: Any,
    outer_dims: int,
    seed: Seed = DEFAULT_SEED,
    noise_type: str = "rademacher",
    recovery_type: str = "hmt",
    lstsq_rcond: float = 1e-6,
    meas_blocksize: int | None = None,
    by_mag: bool = True,
    *,
    power_iters: int = 0,
    progressbar: bool = False,
) -> EighResult:
    r"""Eigendecomposition ``A ≈ U diag(λ) Uᵀ`` of a symmetric operator from random measurements.

    The operator is measured on a random test matrix :math:`\boldsymbol\Omega \in \mathbb{R}^{n\times k}`
    (``k = outer_dims``), :math:`\mathbf{Y} = \mathbf{A}\boldsymbol\Omega`, in blocks of
    ``meas_blocksize`` columns; :math:`\mathbf{Y}` is orthonormalized in place into a basis
    :math:`\mathbf{Q}`, and a ``k × k`` core :math:`\mathbf{C}` with
    :math:`\mathbf{A} \approx \mathbf{Q}\mathbf{C}\mathbf{Q}^\top` is symmetrized and
    diagonalized, :math:`\mathbf{C} = \mathbf{V}\boldsymbol\Lambda\mathbf{V}^\top`,
    :math:`\mathbf{U} = \mathbf{Q}\mathbf{V}`. The recovery types differ in how they get the core
    (see :mod:`curvkit.sketch._symmetric` and ``docs/sketch.md``):

    ========================  ============================  ===================================
    ``recovery_type``         products                      for
    ========================  ============================  ===================================
    ``'hmt'``                 ``k (2 + power_iters)``       any symmetric operator; the most
                                                            accurate (Halko et al. 2011)
    ``'nystrom'``             ``k``                         PSD operators (``A.is_psd``: shifted,
                                                            stable form of Tropp et al. 2017);
                                                            others: truncated core
    ``'singlepass'``          ``k``                         one pass over data, any symmetric
    ``'oversampled_<N>'``     ``k + N``                     one pass, slowly decaying spectra
    ========================  ============================  ===================================

    For ``'hmt'`` with ``power_iters = q`` the sketch is that of :math:`\mathbf{A}^{q+1}`
    (re-orthonormalized between products): the error of HMT improves from the tail
    :math:`\sigma_{j>k}` to :math:`\sigma_{j>k}^{2q+1}` relative terms (Halko et al., §4.5).

    Memory: one ``[k, n]`` block (the basis, returned as the eigenvectors, transposed) plus, for
    Householder QR, a second one while it runs, plus ``meas_blocksize`` columns of products
    (``'hmt'``: ``max(meas_blocksize, k / 8)``, an eighth of the basis at most, for its core);
    ``'oversampled_<N>'`` keeps ``A Φ`` (``[N, n]``) too. ``Ω`` is drawn a block at a time, again
    where a recovery needs it twice, and is the same matrix for every ``meas_blocksize``.

    Args:
        lop: Symmetric operator ``[n, n]``: a curvkit operator, tensor, or any object with
            ``.shape`` and ``@`` that multiplies torch tensors.
        lop_device: The device ``lop`` computes on.
        lop_dtype: Its dtype, ``torch.float32`` or ``torch.float64`` (float16 and bfloat16
            operators are sketched in float32).
        outer_dims: ``k``, the number of measurements and of eigenpairs returned (``≤ n``).
        seed: ``int``, ``torch.Generator`` or ``None``. An integer seed gives the sketch a stream
            of its own, independent of :func:`apost_error`'s with the same integer.
        noise_type: ``'rademacher'``, ``'gaussian'`` or ``'ssrft'``.
        recovery_type: ``'hmt'``, ``'nystrom'``, ``'singlepass'`` or ``'oversampled_<N>'``
            (``k ≤ N ≤ n``).
        lstsq_rcond: Singular values (eigenvalues for Nyström's core) below ``lstsq_rcond``
            times the largest count as zero in the recoveries' pseudo-inverses.
        meas_blocksize: Columns per product. ``None``: the operator's ``columns_per_product``
            (``max_columns``), else as many as fill 2²¹ entries (8 MiB in float32), 1 to 256.
        by_mag: Sort by descending magnitude (else descending value).
        power_iters: Subspace iterations for ``'hmt'``.
        progressbar: Show one progress bar for the run, counting products.

    Returns:
        ``(eigenvalues, eigenvectors)``: ``[k]`` and ``[n, k]`` (orthonormal columns, a transposed
        view of the basis), in ``lop_dtype`` on ``lop_device``, negative eigenvalues kept; the
        pair also has ``.num_products``.

    Raises:
        ValueError: If ``lop`` is not square, ``outer_dims`` exceeds ``n``, ``noise_type`` or
            ``recovery_type`` is unknown, ``power_iters`` is given for another recovery, or
            ``lop`` has another dtype or device.
        TypeError: If ``lop`` has no ``.shape`` and ``@``, or ``lop_dtype`` is not a float dtype.

    Example:
        >>> import torch
        >>> U = torch.linalg.qr(torch.randn(30, 4, dtype=torch.float64)).Q
        >>> A = U @ torch.diag(torch.tensor([4.0, -3.0, 2.0, 1.0], dtype=torch.float64)) @ U.T
        >>> ews, evs = seigh(A, "cpu", torch.float64, 6, seed=0)
        >>> [round(float(e), 10) for e in ews[:4]], tuple(evs.shape)
        ([4.0, -3.0, 2.0, 1.0], (30, 6))
    """
    A = sketch_operator(lop, lop_device, lop_dtype)
    if A.shape[0] != A.shape[1]:
        raise ValueError(
            f"seigh needs a square, symmetric operator, got shape {tuple(A.shape)}; use ssvd for others."
        )
    n = A.shape[0]
    k = check_outer_dims(outer_dims, A)
    check_noise_type(noise_type)
    kind, inner_dims = parse_recovery_type(recovery_type, k, n)
    rcond = nonnegative_float(lstsq_rcond, "lstsq_rcond")
    power_iters = as_integer(power_iters, "power_iters", minimum=0)
    if power_iters and kind != "hmt":
        raise ValueError(f"power_iters needs recovery_type='hmt', got {recovery_type!r}.")
    generator = purpose_generator(seed, "sketch")
    omega = measurement_matrix(noise_type, n, k, generator, A.dtype, A.device)
    width = block_width(A, meas_blocksize, max(k, inner_dims))
    num_products = k * (2 + power_iters) if kind == "hmt" else k + inner_dims
    with product_progress(A, progressbar, "seigh", num_products) as A:
        Y_rows = measured_rows(A, omega, width)
        if kind == "hmt":
            widen = meas_blocksize is None and A.columns_per_product is None  # no bound set
            values, U_rows = _symmetric.hmt(A, Y_rows, width, widen, by_mag, power_iters)
        elif kind == "singlepass":
            values, U_rows = _symmetric.singlepass(Y_rows, omega, width, rcond, by_mag)
        elif kind == "nystrom":
            recover = _symmetric.nystrom_psd if A.is_psd else _symmetric.nystrom_indefinite
            values, U_rows = recover(Y_rows, omega, width, rcond, by_mag)
        else:
            phi = measurement_matrix(noise_type, n, inner_dims, generator, A.dtype, A.device)
            psi = measurement_matrix(noise_type, n, inner_dims, generator, A.dtype, A.device)
            values, U_rows = _symmetric.oversampled(A, Y_rows, phi, psi, width, rcond, by_mag)
    return EighResult((values, U_rows.T), num_products)
