"""A sketched eigendecomposition of the Hessian (``seigh``) with its a-posteriori error."""

from __future__ import annotations

from typing import Any

import numpy

from curvkit import DiagonalLinearOperator, as_linear_operator
from curvkit.report.a_posteriori import certified_relative_error, error_plan
from curvkit.report.budget import BudgetTooSmallError
from curvkit.report.context import AnalysisContext, Findings, NotAvailableError, SummaryRow
from curvkit.report.figures import new_figure, saved
from curvkit.report.statistics import CONFIDENCE

MIN_OUTER_DIMS = 2


def seigh_function() -> Any:
    """``curvkit.sketch.algorithms.seigh``.

    Raises:
        NotAvailableError: If this curvkit has no ``curvkit.sketch``.
    """
    try:
        from curvkit.sketch.algorithms import seigh
    except ImportError:
        raise NotAvailableError("curvkit.sketch.algorithms.seigh") from None
    return seigh


def sketched_eigendecomposition(context: AnalysisContext) -> Findings:
    """``seigh(H, outer_dims=k)`` (HMT, ``2k`` products) and ``apost_error(H, U diag(λ) Uᵀ)``.

    The error estimate's test vectors come first out of the share (at most 30, one product with
    the Hessian each); ``k`` takes the rest, up to the dimension.

    Raises:
        NotAvailableError: If this curvkit has no ``curvkit.sketch``.
        BudgetTooSmallError: If the share holds fewer than two measurements after the error's.
    """
    seigh = seigh_function()
    findings = Findings(
        functions=["curvkit.sketch.algorithms.seigh", "curvkit.sketch.a_posteriori.apost_error"]
    )
    H = context.operator("hessian")
    allowance = context.meter.allowance
    num_meas = error_plan(allowance // 3, per_measurement=1)
    outer_dims = min(H.shape[0], (allowance - num_meas) // 2)
    if outer_dims < MIN_OUTER_DIMS:
        raise BudgetTooSmallError(
            f"a sketch needs at least {2 * MIN_OUTER_DIMS + num_meas} products; raise --budget."
        )
    values, vectors = seigh(
        H, H.device, H.dtype, outer_dims, seed=context.seed, noise_type="rademacher", recovery_type="hmt"
    )
    approximation = (
        as_linear_operator(vectors) @ DiagonalLinearOperator(values) @ as_linear_operator(vectors.T)
    )
    error = certified_relative_error(H, approximation, num_meas, context.seed + 1)
    magnitudes = values.abs().double().cpu().numpy()
    order = numpy.argsort(-magnitudes)
    signed = values.double().cpu().numpy()[order]
    findings.numbers = {
        "outer_dims": outer_dims,
        "eigenvalues": signed.tolist(),
        "relative_error": error,
    }
    low, high = error["interval"]
    findings.summary.append(
        SummaryRow(
            f"‖H − sketch‖_F / ‖H‖_F (rank {outer_dims})",
            f"{error['relative_error']:.3g} ({CONFIDENCE:.0%}: {low:.3g} to {high:.3g})",
            "seigh, apost_error",
        )
    )
    figure, axes = new_figure(width=6.0)
    ax = axes[0, 0]
    index = numpy.arange(1, len(signed) + 1)
    ax.semilogy(index[signed >= 0], signed[signed >= 0], ".", color="tab:blue", label="positive")
    ax.semilogy(index[signed < 0], -signed[signed < 0], ".", color="tab:red", label="negative (magnitude)")
    ax.set_xlabel("i (by magnitude)")
    ax.set_ylabel("|eigenvalue|")
    ax.set_title(
        f"Sketched Hessian eigenvalues (rank {outer_dims}, relative error {error['relative_error']:.2g})"
    )
    ax.legend()
    findings.figures.append(
        saved(
            context,
            figure,
            "sketch_eigenvalues.png",
            "The Hessian's eigenvalues from a random sketch, by decreasing magnitude (red: negative); "
            "the a-posteriori relative error in the title says how much of the Hessian they miss.",
        )
    )
    return findings
