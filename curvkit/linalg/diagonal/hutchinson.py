"""Hutchinson's diagonal estimator (Bekas, Kokiopoulou & Saad, 2007; Martens et al., 2012)."""

from __future__ import annotations

from typing import Any

import numpy
import torch
from torch import Tensor

from curvkit._boundary import as_integer, to_numpy
from curvkit.linalg._operator import square_operator, working_dtype
from curvkit.linalg._progress import product_progress
from curvkit.linalg._random import RandomColumns, Seed, as_generator, block_width
from curvkit.linear_operator import LinearOperator


def hutchinson_diag(
    A: Any,
    num_matvecs: int,
    distribution: str = "rademacher",
    *,
    seed: Seed = None,
    progressbar: bool = False,
) -> Tensor:
    r"""Estimate :math:`\mathrm{diag}(\mathbf{A})` with Hutchinson's method.

    With random vectors :math:`\mathbf{v}_1, \dots, \mathbf{v}_m`,
    :math:`\mathbb{E}[\mathbf{v}\mathbf{v}^\top] = \mathbf{I}`, multiplied onto :math:`\mathbf{A}`
    in blocks,

    .. math::
        \mathrm{diag}(\mathbf{A}) \approx \frac{1}{m} \sum_{i=1}^m \mathbf{v}_i \odot
        \mathbf{A}\mathbf{v}_i,

    unbiased because :math:`\mathbb{E}[v_i A_{ij} v_j] = A_{ij}\delta_{ij}`. Entry :math:`i`
    has variance :math:`\frac{1}{m}\sum_{j\neq i} A_{ij}^2` for Rademacher vectors.

    Memory: the estimate, and one block of ``b`` vectors and its product, ``(2 b + 1) n`` numbers
    for ``A ∈ ℝⁿˣⁿ``, with ``b = A.columns_per_product`` (``A.max_columns``) or all ``m`` if that
    is not set; the estimate is the same for every ``b``.

    Bekas, C., Kokiopoulou, E., & Saad, Y. (2007). An estimator for the diagonal of a matrix.
    Applied Numerical Mathematics.

    Args:
        A: Square operator.
        num_matvecs: Number of products with ``A``, ``m ≥ 1``.
        distribution: ``'rademacher'`` or ``'normal'``.
        seed: ``int``, ``torch.Generator`` or ``None``.
        progressbar: Show one progress bar for the run, counting products.

    Returns:
        The ``[n]`` estimate as a tensor on the operator's device.

    Raises:
        ValueError: If ``A`` is not square, ``num_matvecs < 1`` or ``distribution`` is unknown.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0]))
        >>> hutchinson_diag(A, 1, seed=0)  # Rademacher vectors are exact on diagonal matrices
        tensor([1., 2., 3.])
    """
    A = square_operator(A, typed=True)
    as_integer(num_matvecs, "num_matvecs", minimum=1)
    columns = RandomColumns(
        A.shape[0], num_matvecs, distribution, as_generator(seed, A.device), working_dtype(A), A.device
    )
    total = torch.zeros(A.shape[0], dtype=working_dtype(A), device=A.device)
    with product_progress(A, progressbar, "hutchinson_diag", num_matvecs) as A:
        for _, V in columns.blocks(block_width(A, num_matvecs)):
            total += (V * A.matmat(V)).sum(dim=1)
    return total / num_matvecs


class HutchinsonDiagonalEstimator:
    r"""Class to perform diagonal estimation with Hutchinson's method.

    A thin wrapper around :func:`hutchinson_diag` with one product per sample. For details, see

    Martens, J., Sutskever, I., & Swersky, K. (2012). Estimating the Hessian by
    back-propagating curvature. International Conference on Machine Learning (ICML).

    Let :math:`\mathbf{A}` be a square linear operator. We can approximate its diagonal
    :math:`\mathrm{diag}(\mathbf{A})` by drawing a random vector :math:`\mathbf{v}` which
    satisfies :math:`\mathbb{E}[\mathbf{v} \mathbf{v}^\top] = \mathbf{I}` and sample from the
    estimator

    .. math::
        \mathbf{a} := \mathbf{v} \odot \mathbf{A} \mathbf{v} \approx \mathrm{diag}(\mathbf{A})\,.

    This estimator is unbiased,

    .. math::
        \mathbb{E}[a_i] = \sum_j \mathbb{E}[v_i A_{i,j} v_j] = \sum_j A_{i,j} \mathbb{E}[v_i v_j]
        = \sum_j A_{i,j} \delta_{i, j} = A_{i,i}\,.

    Samples are NumPy arrays when ``A`` is a NumPy array or a SciPy / foreign operator (as in the
    API reference), and torch tensors on the operator's device when ``A`` is a torch tensor or a
    curvkit operator.

    Args:
        A: Linear square-shaped operator whose diagonal will be estimated.
        seed: ``int``, ``torch.Generator`` or ``None`` (seed drawn once from NumPy's global
            random state).

    Raises:
        ValueError: If the operator is not square.

    Example:
        >>> from numpy import diag, mean, round
        >>> from numpy.random import rand, seed
        >>> from numpy.linalg import norm
        >>> seed(0)  # make deterministic
        >>> A = rand(10, 10)
        >>> diag_A = diag(A)  # exact diagonal as reference
        >>> estimator = HutchinsonDiagonalEstimator(A)
        >>> # one- and multi-sample approximations
        >>> diag_A_low_precision = estimator.sample()
        >>> samples = [estimator.sample() for _ in range(1_000)]
        >>> diag_A_high_precision = mean(samples, axis=0)
        >>> # compute residual norms
        >>> error_low_precision = norm(diag_A - diag_A_low_precision)
        >>> error_high_precision = norm(diag_A - diag_A_high_precision)
        >>> assert error_low_precision > error_high_precision
        >>> print(round(error_low_precision, 4), round(error_high_precision, 4))
        6.4232 0.14
    """

    def __init__(self, A: Any, seed: Seed = None):
        self._returns_numpy = not isinstance(A, (Tensor, LinearOperator))
        self._A = square_operator(A, typed=True)
        self._generator = as_generator(seed, self._A.device)

    def sample(self, distribution: str = "rademacher") -> numpy.ndarray | Tensor:
        """Draw a sample from the diagonal estimator (one product with ``A``).

        Multiple samples can be combined into a more accurate diagonal estimation via averaging.

        Args:
            distribution: ``'rademacher'`` or ``'normal'``.

        Returns:
            A sample from the diagonal estimator (NumPy array or tensor, see the class docstring).

        Raises:
            ValueError: If ``distribution`` is unknown.
        """
        estimate = hutchinson_diag(self._A, 1, distribution=distribution, seed=self._generator)
        return to_numpy(estimate) if self._returns_numpy else estimate
