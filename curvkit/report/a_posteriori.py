"""Relative Frobenius errors certified by ``curvkit.sketch.a_posteriori.apost_error``."""

from __future__ import annotations

import math
from typing import Any

from curvkit.report.budget import BudgetTooSmallError
from curvkit.report.context import NotAvailableError
from curvkit.report.statistics import CONFIDENCE, relative_error_interval

NUM_MEAS = 30
"""Gaussian test vectors of the error estimate (fewer where the share is small)."""
MIN_NUM_MEAS = 5


def apost_error_function() -> Any:
    """``curvkit.sketch.a_posteriori.apost_error``.

    Raises:
        NotAvailableError: If this curvkit has no ``curvkit.sketch``.
    """
    try:
        from curvkit.sketch.a_posteriori import apost_error
    except ImportError:
        raise NotAvailableError("curvkit.sketch.a_posteriori.apost_error") from None
    return apost_error


def certified_relative_error(A1: Any, A2: Any, num_meas: int, seed: int) -> dict[str, Any]:
    """``‖A₁ − A₂‖_F / ‖A₁‖_F`` estimated by ``apost_error`` with a 95 % interval.

    ``apost_error`` multiplies both operators with ``num_meas`` Gaussian test vectors and returns
    estimates of ``‖A₁‖²_F``, ``‖A₂‖²_F`` and ``‖A₁ − A₂‖²_F``; the interval follows from its tail
    bounds (:func:`curvkit.report.statistics.relative_error_interval`).

    Raises:
        NotAvailableError: If this curvkit has no ``curvkit.sketch``.
    """
    apost_error = apost_error_function()
    (norm1_sq, norm2_sq, error_sq), _ = apost_error(
        A1, A2, A1.device, A1.dtype, num_meas=num_meas, seed=seed, noise_type="gaussian"
    )
    norm1_sq, norm2_sq, error_sq = float(norm1_sq), float(norm2_sq), float(error_sq)
    low, high = relative_error_interval(error_sq, norm1_sq, num_meas, CONFIDENCE)
    return {
        "relative_error": math.sqrt(error_sq / norm1_sq),
        "interval": [low, high],
        "confidence": CONFIDENCE,
        "num_meas": num_meas,
        "frobenius_norm_1": math.sqrt(norm1_sq),
        "frobenius_norm_2": math.sqrt(norm2_sq),
    }


def error_plan(allowance: int, per_measurement: int) -> int:
    """Test vectors of ``apost_error`` that ``allowance`` products pay for, at most :data:`NUM_MEAS`.

    Raises:
        BudgetTooSmallError: If fewer than :data:`MIN_NUM_MEAS` fit.
    """
    num_meas = min(NUM_MEAS, allowance // per_measurement)
    if num_meas < MIN_NUM_MEAS:
        raise BudgetTooSmallError(
            f"an a-posteriori error needs at least {MIN_NUM_MEAS * per_measurement} products, "
            f"the share has {allowance}; raise --budget."
        )
    return num_meas
