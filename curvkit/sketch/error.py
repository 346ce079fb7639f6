r"""A-posteriori error estimates of an approximation :math:`\hat{\mathbf{A}} \approx \mathbf{A}`.

With test vectors :math:`\boldsymbol\omega_i` of i.i.d. standard normal entries, independent of
how :math:`\hat{\mathbf{A}}` was found,

.. math::
    \widehat{\mathrm{err}^2}
    = \frac{1}{s}\sum_{i=1}^s \|(\mathbf{A} - \hat{\mathbf{A}})\boldsymbol\omega_i\|_2^2,
    \qquad \mathbb{E}\,\widehat{\mathrm{err}^2} = \|\mathbf{A} - \hat{\mathbf{A}}\|_F^2,

and likewise for :math:`\|\mathbf{A}\|_F^2` and :math:`\|\hat{\mathbf{A}}\|_F^2`. The estimate of
the *squared* error is a weighted sum of :math:`\chi^2_1` variables, and its spread does not depend on
the dimension: for :math:`0 < \varepsilon < 1` (Tropp, Yurtsever, Udell & Cevher 2019, §6.4;
Martinsson & Tropp 2020, §12.4)

.. math::
    P\{\widehat{\mathrm{err}^2} \le (1-\varepsilon)\,\mathrm{err}^2\}
    \le \bigl(e^{\varepsilon}(1-\varepsilon)\bigr)^{s/2},
    \qquad
    P\{\widehat{\mathrm{err}^2} \ge (1+\varepsilon)\,\mathrm{err}^2\}
    \le \bigl(e^{-\varepsilon}(1+\varepsilon)\bigr)^{s/2}.

The bounds are stated for the squared error, which is what the test estimates; the error itself
is off by a factor within :math:`[\sqrt{1-\varepsilon}, \sqrt{1+\varepsilon}]` on the same events.

Tropp, J. A., Yurtsever, A., Udell, M., & Cevher, V. (2019). Streaming low-rank matrix
approximation with an application to scientific simulation. SIAM J. Sci. Comput., 41(4).
Martinsson, P.-G., & Tropp, J. A. (2020). Randomized numerical linear algebra: Foundations and
algorithms. Acta Numerica, 29.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import Tensor

from curvkit._boundary import as_integer
from curvkit.linalg._dots import column_dots
from curvkit.linalg._operator import finite_float
from curvkit.linalg._progress import product_progress
from curvkit.linalg._random import RandomColumns, Seed, purpose_generator
from curvkit.sketch._operator import block_width, sketch_operator
from curvkit.sketch._results import SketchResult
from curvkit.sketch.eigh import DEFAULT_SEED

ERROR_NOISE_TYPES = ("gaussian", "rademacher")


def apost_error(
    lop1: Any,
    lop2: Any,
    device: Any,
    dtype: Any,
    num_meas: int = 5,
    seed: Seed = DEFAULT_SEED,
    noise_type: str = "gaussian",
    meas_blocksize: int | None = None,
    *,
    progressbar: bool = False,
) -> SketchResult:
    r"""Estimate ``‖A₁‖²_F``, ``‖A₂‖²_F`` and ``‖A₁ - A₂‖²_F`` from ``num_meas`` random products each.

    Both operators multiply the same test vectors, ``meas_blocksize`` at a time; the sums run
    in float64. The bounds of :func:`apost_error_bounds` hold for ``'gaussian'`` test vectors;
    ``'rademacher'`` ones give unbiased estimates too, with another spread. An integer ``seed``
    gives the test a stream of its own: passing the sketch's seed again does not reuse its
    random numbers (skerch's did, which correlates the test with the sketch it tests).

    Args:
        lop1: Operator ``A₁`` (the curvature matrix, say).
        lop2: Operator ``A₂`` of the same shape (its approximation, say).
        device: The operators' device.
        dtype: Their dtype, ``torch.float32`` or ``torch.float64`` (float16 and bfloat16
            operators are measured in float32).
        num_meas: Number of test vectors ``s``.
        seed: ``int``, ``torch.Generator`` or ``None``.
        noise_type: ``'gaussian'`` or ``'rademacher'``.
        meas_blocksize: Test vectors per product (``None``: the operators'
            limit, else 2²¹ entries' worth, 1 to 256).
        progressbar: Show one progress bar for the run, counting products with ``lop1``.

    Returns:
        ``((f1, f2, err), (F1, F2, E))``: the three estimates (0-d float64 tensors) and the
        ``s`` values they average, ``‖A₁ωᵢ‖²``, ``‖A₂ωᵢ‖²``, ``‖(A₁ − A₂)ωᵢ‖²``; ``.num_products``
        counts the products with each operator (``s``).

    Raises:
        ValueError: If the shapes differ, ``noise_type`` is unknown, ``num_meas < 1``, or an
            operator has another dtype or device.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.tensor([3.0, 4.0], dtype=torch.float64))
        >>> (f1, f2, err), _ = apost_error(A, A, "cpu", torch.float64, num_meas=50)
        >>> float(err), 10 < float(f1) < 50  # ‖A‖²_F = 25
        (0.0, True)
    """
    A1 = sketch_operator(lop1, device, dtype, "lop1")
    A2 = sketch_operator(lop2, device, dtype, "lop2")
    if tuple(A1.shape) != tuple(A2.shape):
        raise ValueError(
            f"lop1 and lop2 must have the same shape, got {tuple(A1.shape)} and {tuple(A2.shape)}."
        )
    num_meas = as_integer(num_meas, "num_meas", minimum=1)
    if noise_type not in ERROR_NOISE_TYPES:
        raise ValueError(f"noise_type must be one of {ERROR_NOISE_TYPES}, got {noise_type!r}.")
    distribution = "normal" if noise_type == "gaussian" else "rademacher"
    generator = purpose_generator(seed, "error test")
    omega = RandomColumns(A1.shape[1], num_meas, distribution, generator, A1.dtype, A1.device)
    width = min(block_width(A1, meas_blocksize, num_meas), block_width(A2, meas_blocksize, num_meas))
    values = torch.empty(3, num_meas, dtype=torch.float64, device=A1.device)
    with product_progress(A1, progressbar, "apost_error", num_meas) as A1:
        for start, block in omega.blocks(width):
            stop = start + block.shape[1]
            Y1, Y2 = A1.matmat(block), A2.matmat(block)
            values[0, start:stop] = column_dots(Y1, Y1)
            values[1, start:stop] = column_dots(Y2, Y2)
            difference = Y1.sub_(Y2)
            values[2, start:stop] = column_dots(difference, difference)
    F1, F2, E = values
    return SketchResult(((F1.mean(), F2.mean(), E.mean()), (F1, F2, E)), num_meas)


class ErrorBounds(dict):
    """``{'LOWER: P(err_sq<=…x)': p_low, 'HIGHER: P(err_sq>=…x)': p_high}`` with ``.lower`` and ``.higher``.

    skerch's keys (``'LOWER: P(err<=0.5x)'``, any key with ``err<=`` / ``err>=``) find the same
    probabilities, which are those of the squared error.
    """

    lower: float
    higher: float

    def __missing__(self, key: Any) -> float:
        if isinstance(key, str) and re.search(r"err\w*\s*<=", key):
            return self.lower
        if isinstance(key, str) and re.search(r"err\w*\s*>=", key):
            return self.higher
        raise KeyError(key)


def apost_error_bounds(num_measurements: int, rel_err: float, is_complex: bool = False) -> ErrorBounds:
    r"""Bounds on the probability that :func:`apost_error`'s squared error is off by more than ``rel_err``.

    For ``s = num_measurements`` Gaussian test vectors and :math:`\varepsilon` = ``rel_err``:
    ``lower`` :math:`= (e^{\varepsilon}(1-\varepsilon))^{s/2} \ge P\{\widehat{\mathrm{err}^2}
    \le (1-\varepsilon)\,\mathrm{err}^2\}` and ``higher`` :math:`= (e^{-\varepsilon}(1+\varepsilon))^{s/2}
    \ge P\{\widehat{\mathrm{err}^2} \ge (1+\varepsilon)\,\mathrm{err}^2\}` (exponent ``s`` for
    complex Gaussian vectors). They hold for any operator and dimension; they are attained when
    the error has rank one.

    Args:
        num_measurements: ``s ≥ 1``.
        rel_err: ``ε`` in ``(0, 1)``.
        is_complex: Complex Gaussian test vectors (twice the degrees of freedom).

    Returns:
        The two bounds (a dict, see :class:`ErrorBounds`).

    Raises:
        ValueError: If ``num_measurements < 1`` or ``rel_err`` is not in ``(0, 1)``.

    Example:
        >>> bounds = apost_error_bounds(30, 0.5)
        >>> round(bounds.lower, 5), round(bounds.higher, 4)
        (0.05518, 0.2422)
    """
    s = as_integer(num_measurements, "num_measurements", minimum=1)
    eps = finite_float(rel_err, "rel_err")
    if not 0 < eps < 1:
        raise ValueError(f"rel_err must lie in (0, 1), got {rel_err!r}.")
    exponent = s if is_complex else s / 2
    bounds = ErrorBounds(
        {
            f"LOWER: P(err_sq<={1 - eps:g}x)": (math.exp(eps) * (1 - eps)) ** exponent,
            f"HIGHER: P(err_sq>={1 + eps:g}x)": (math.exp(-eps) * (1 + eps)) ** exponent,
        }
    )
    bounds.lower, bounds.higher = bounds.values()
    return bounds


def scree_bounds(S: Tensor, err_frob: Any) -> tuple[Tensor, Tensor]:
    r"""Bounds on the scree curve ``‖A - [Â]_r‖²_F / ‖A‖²_F`` for ``r = 0, …, k - 1``.

    :math:`[\hat{\mathbf{A}}]_r` keeps the ``r`` leading terms of a decomposition with values
    ``S`` (non-increasing magnitude), :math:`t_r = (\sum_{i > r} S_i^2)^{1/2}` is its distance to
    :math:`\hat{\mathbf{A}}`, and ``err_frob`` estimates :math:`e = \|\mathbf{A} - \hat{\mathbf{A}}\|_F`.
    By the triangle inequality, with :math:`\|\hat{\mathbf{A}}\|_F = t_0`,

    .. math::
        \frac{\max(t_r - e, 0)^2}{(t_0 + e)^2} \;\le\; \mathrm{scree}(r)
        \;\le\; \frac{(t_r + e)^2}{\max(t_0 - e, 0)^2}

    (Tropp et al. 2019, §6.5). For a Rayleigh–Ritz approximation (``'hmt'``) the scree is exactly
    :math:`(e^2 + t_r^2) / (e^2 + t_0^2)`, and skerch's lower curve :math:`t_r^2 / t_0^2` is a bound
    too; for the one-pass recoveries it is not (``Â = diag(1, 1)`` for ``A = diag(1, 0)``).

    Args:
        S: Eigen- or singular values ``[k]``, in non-increasing magnitude.
        err_frob: The estimated error :math:`e` (not squared), e.g. ``err_sq ** 0.5``.

    Returns:
        ``(lower, upper)``, each ``[k]`` in float64 (``upper`` is infinite where ``e ≥ t_0``).

    Raises:
        ValueError: If ``S`` is not a vector of non-increasing magnitude, or ``err_frob`` is negative.

    Example:
        >>> lower, upper = scree_bounds(torch.tensor([3.0, 2.0, 1.0]), 0.0)
        >>> [round(x, 4) for x in lower.tolist()], torch.equal(lower, upper)
        ([1.0, 0.3571, 0.0714], True)
    """
    if not isinstance(S, Tensor) or S.ndim != 1:
        raise ValueError(f"S must be a 1-d tensor, got {type(S).__name__}.")
    magnitudes = S.detach().double().abs()
    if bool((magnitudes[1:] > magnitudes[:-1]).any()):
        raise ValueError(
            "S must be given in non-increasing magnitude (as seigh(by_mag=True) and ssvd return it)."
        )
    e = finite_float(err_frob, "err_frob")
    if e < 0:
        raise ValueError(f"err_frob must be non-negative, got {err_frob!r}.")
    tails = magnitudes.square().flip(0).cumsum(0).flip(0).sqrt()  # t_0, …, t_{k-1}
    total = float(tails[0]) if tails.numel() else 0.0
    lower = (tails - e).clamp(min=0).square() / (total + e) ** 2
    upper = (tails + e).square() / max(total - e, 0.0) ** 2 if total > e else torch.full_like(tails, math.inf)
    return lower, upper
