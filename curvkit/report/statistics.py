"""Error bars: a confidence interval from repeated estimates, and apost_error's tail bounds inverted."""

from __future__ import annotations

import math

import numpy
from scipy.optimize import brentq
from scipy.stats import t as student_t

CONFIDENCE = 0.95


def mean_with_error_bar(samples: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean of independent estimates and the half-width of its Student-t confidence interval.

    For ``r`` independent, roughly normal estimates of the same quantity (here: runs of a
    trace estimator with independent seeds), ``mean ± t_{r-1} · s / √r`` covers the quantity with
    probability ``confidence``, where ``s`` is their sample standard deviation.

    Args:
        samples: At least two estimates.
        confidence: Coverage of the interval, in ``(0, 1)``.

    Returns:
        ``(mean, half_width, standard_error)``.

    Example:
        >>> mean, half_width, _ = mean_with_error_bar([1.0, 2.0, 3.0])
        >>> mean, round(half_width, 4)  # t_2 = 4.3027, s = 1
        (2.0, 2.4841)
    """
    values = numpy.asarray(samples, dtype=numpy.float64)
    if values.size < 2:
        raise ValueError(f"an error bar needs at least two estimates, got {values.size}.")
    standard_error = float(values.std(ddof=1) / math.sqrt(values.size))
    quantile = float(student_t.ppf(0.5 + confidence / 2, values.size - 1))
    return float(values.mean()), quantile * standard_error, standard_error


def squared_norm_interval(estimate: float, num_meas: int, failure: float) -> tuple[float, float]:
    r"""Interval for :math:`\|\mathbf{M}\|_F^2` from its estimate with ``num_meas`` Gaussian test vectors.

    The estimate :math:`\hat e = \frac1s \sum_i \|\mathbf{M}\boldsymbol\omega_i\|^2` (what
    ``curvkit.sketch.a_posteriori.apost_error`` returns for ``M = A₁``, ``A₂`` and ``A₁ - A₂``)
    satisfies, for any :math:`\mathbf{M}` and :math:`0 < \varepsilon < 1` (Tropp, Yurtsever, Udell &
    Cevher 2019, §6.4; Martinsson & Tropp 2020, §12.4),
    :math:`P\{\hat e \le (1-\varepsilon) e\} \le (e^{\varepsilon}(1-\varepsilon))^{s/2}` and
    :math:`P\{\hat e \ge (1+\varepsilon) e\} \le (e^{-\varepsilon}(1+\varepsilon))^{s/2}`. With each
    bound set to ``failure``, the interval :math:`[\hat e / (1 + \varepsilon_+), \hat e / (1 -
    \varepsilon_-)]` misses :math:`e = \|\mathbf{M}\|_F^2` with probability at most ``2 · failure``.

    Args:
        estimate: The estimate :math:`\hat e \ge 0`.
        num_meas: Number of Gaussian test vectors ``s``.
        failure: Probability bound of each tail, in ``(0, 1)``.

    Returns:
        ``(low, high)``.

    Example:
        >>> low, high = squared_norm_interval(1.0, 30, 0.0125)
        >>> round(low, 3), round(high, 3)
        (0.508, 2.4)
    """
    level = failure ** (2 / num_meas)  # the bound per measurement pair: solve f(ε) = level
    below = brentq(lambda eps: math.exp(eps) * (1 - eps) - level, 0.0, 1.0)
    above = brentq(lambda eps: math.exp(-eps) * (1 + eps) - level, 0.0, 1e3)
    return estimate / (1 + above), estimate / (1 - below)


def relative_error_interval(
    error_sq: float, norm_sq: float, num_meas: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    r"""Interval for :math:`\|\mathbf{A}_1 - \mathbf{A}_2\|_F / \|\mathbf{A}_1\|_F` from ``apost_error``.

    Both squared norms are estimated from the same ``num_meas`` Gaussian test vectors; the
    interval combines the four one-sided bounds of :func:`squared_norm_interval`, each with
    failure probability ``(1 - confidence) / 4``, so that it holds with probability at least
    ``confidence`` (union bound).

    Returns:
        ``(low, high)`` of the relative error (not squared).
    """
    failure = (1 - confidence) / 4
    error_low, error_high = squared_norm_interval(error_sq, num_meas, failure)
    norm_low, norm_high = squared_norm_interval(norm_sq, num_meas, failure)
    return math.sqrt(error_low / norm_high), math.sqrt(error_high / norm_low)
