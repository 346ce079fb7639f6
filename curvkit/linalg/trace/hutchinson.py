"""Hutchinson's trace estimator (Hutchinson, 1989)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from curvkit._boundary import as_integer
from curvkit.linalg._dots import column_dots
from curvkit.linalg._operator import square_operator, working_dtype
from curvkit.linalg._progress import product_progress
from curvkit.linalg._random import RandomColumns, Seed, as_generator, block_width


def hutchinson_trace(
    A: Any,
    num_matvecs: int,
    distribution: str = "rademacher",
    *,
    seed: Seed = None,
    progressbar: bool = False,
) -> Tensor:
    r"""Estimate :math:`\mathrm{Tr}(\mathbf{A})` with Hutchinson's method.

    Draws random vectors :math:`\mathbf{v}_1, \dots, \mathbf{v}_m` with
    :math:`\mathbb{E}[\mathbf{v}\mathbf{v}^\top] = \mathbf{I}`, multiplies them onto
    :math:`\mathbf{A}` in blocks, and averages the unbiased samples
    :math:`\mathbf{v}_i^\top \mathbf{A} \mathbf{v}_i`:

    .. math::
        \mathrm{Tr}(\mathbf{A}) \approx \frac{1}{m} \sum_{i=1}^m \mathbf{v}_i^\top \mathbf{A} \mathbf{v}_i.

    Its variance is :math:`\frac{2}{m}(\|\mathbf{A}\|_F^2 - \sum_i A_{ii}^2)` for Rademacher
    and :math:`\frac{2}{m}\|\mathbf{A}\|_F^2` for Gaussian vectors (symmetric :math:`\mathbf{A}`),
    so the error decays as :math:`O(1/\sqrt{m})`.

    Memory: one block of ``b`` vectors and its product, ``2 b n`` numbers for ``A ∈ ℝⁿˣⁿ``, with
    ``b = A.columns_per_product`` (``A.max_columns``) or all ``m`` if that is not set; the
    estimate is the same for every ``b``.

    Hutchinson, M. (1989). A stochastic estimator of the trace of the influence matrix for
    Laplacian smoothing splines. Communications in Statistics—Simulation and Computation.

    Args:
        A: Square operator (curvkit operator, tensor, NumPy array, SciPy ``LinearOperator``).
        num_matvecs: Number of products with ``A`` (random vectors), ``m ≥ 1``.
        distribution: ``'rademacher'`` or ``'normal'``.
        seed: ``int``, ``torch.Generator`` or ``None`` (see :mod:`curvkit.linalg._random`).
        progressbar: Show one progress bar for the run, counting products.

    Returns:
        The estimate as a 0-dimensional tensor on the operator's device.

    Raises:
        ValueError: If ``A`` is not square, ``num_matvecs < 1`` or ``distribution`` is unknown.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
        >>> float(hutchinson_trace(A, 10, seed=0))  # Rademacher vectors are exact on diagonals
        5050.0
    """
    A = square_operator(A, typed=True)
    as_integer(num_matvecs, "num_matvecs", minimum=1)
    columns = RandomColumns(
        A.shape[0], num_matvecs, distribution, as_generator(seed, A.device), working_dtype(A), A.device
    )
    total = torch.zeros((), dtype=torch.float64, device=A.device)
    with product_progress(A, progressbar, "hutchinson_trace", num_matvecs) as A:
        for _, V in columns.blocks(block_width(A, num_matvecs)):
            total += column_dots(V, A.matmat(V)).sum()
    return (total / num_matvecs).to(working_dtype(A))


class HutchinsonTraceEstimator:
    r"""Class to perform trace estimation with Hutchinson's method.

    A thin wrapper around :func:`hutchinson_trace` with one product per sample. For details, see

    Hutchinson, M. (1989). A stochastic estimator of the trace of the influence matrix for
    Laplacian smoothing splines. Communications in Statistics—Simulation and Computation.

    Let :math:`\mathbf{A}` be a square linear operator. We can approximate its trace
    :math:`\mathrm{Tr}(\mathbf{A})` by drawing a random vector :math:`\mathbf{v}` which satisfies
    :math:`\mathbb{E}[\mathbf{v} \mathbf{v}^\top] = \mathbf{I}` and sample from the estimator

    .. math::
        a := \mathbf{v}^\top \mathbf{A} \mathbf{v} \approx \mathrm{Tr}(\mathbf{A})\,.

    This estimator is unbiased,

    .. math::
        \mathbb{E}[a] = \mathrm{Tr}(\mathbb{E}[\mathbf{v}^\top\mathbf{A} \mathbf{v}])
        = \mathrm{Tr}(\mathbf{A} \mathbb{E}[\mathbf{v} \mathbf{v}^\top])
        = \mathrm{Tr}(\mathbf{A} \mathbf{I}) = \mathrm{Tr}(\mathbf{A})\,.

    Args:
        A: Linear square-shaped operator whose trace will be estimated.
        seed: ``int``, ``torch.Generator`` or ``None``; ``None`` draws the seed from NumPy's global
            random state once, here, so ``numpy.random.seed`` makes the samples repeatable.

    Raises:
        ValueError: If the operator is not square.

    Example:
        >>> from numpy import trace, mean, round
        >>> from numpy.random import rand, seed
        >>> seed(0)  # make deterministic
        >>> A = rand(10, 10)
        >>> tr_A = trace(A)  # exact trace as reference
        >>> estimator = HutchinsonTraceEstimator(A)
        >>> # one- and multi-sample approximations
        >>> tr_A_low_precision = estimator.sample()
        >>> tr_A_high_precision = mean([estimator.sample() for _ in range(1_000)])
        >>> assert abs(tr_A - tr_A_low_precision) > abs(tr_A - tr_A_high_precision)
        >>> print(round(tr_A, 4), round(tr_A_low_precision, 4), round(tr_A_high_precision, 4))
        4.4575 6.5651 4.2649
    """

    def __init__(self, A: Any, seed: Seed = None):
        self._A = square_operator(A, typed=True)
        self._generator = as_generator(seed, self._A.device)

    def sample(self, distribution: str = "rademacher") -> float:
        """Draw a sample from the trace estimator (one product with ``A``).

        Multiple samples can be combined into a more accurate trace estimation via averaging.

        Args:
            distribution: ``'rademacher'`` or ``'normal'``.

        Returns:
            Sample from the trace estimator.

        Raises:
            ValueError: If ``distribution`` is unknown.
        """
        return float(hutchinson_trace(self._A, 1, distribution=distribution, seed=self._generator))
