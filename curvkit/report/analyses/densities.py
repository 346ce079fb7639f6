"""Spectral densities of the Hessian and the GGN (Papyan 2020), on a linear and a log scale."""

from __future__ import annotations

from typing import Any

import numpy

from curvkit import lanczos_approximate_log_spectrum, lanczos_approximate_spectrum
from curvkit.report.budget import BudgetTooSmallError, CountedOperator
from curvkit.report.context import MATRIX_NAMES, AnalysisContext, Findings, by_matrix
from curvkit.report.figures import COLORS, new_figure, saved

MATRICES = ["hessian", "ggn"]
NCV = 32
"""Lanczos vectors per quadrature (fewer where the share is small)."""
MIN_NCV = 8
NUM_POINTS = 512
EPSILON = 1e-5
"""Shift of the log scale: the density is that of log(|λ| + ε)."""


def density_plan(allowance: int, dim: int) -> tuple[int, int]:
    """``(ncv, num_repeats)`` that fit ``allowance`` products for one density.

    A density's first Lanczos run also finds the spectrum's ends and may grow to ``4 · ncv``
    vectors; each further repeat takes ``ncv``: at most ``(num_repeats + 3) · ncv`` products.

    Raises:
        BudgetTooSmallError: If not even one run of :data:`MIN_NCV` vectors fits.
    """
    ncv = min(NCV, dim)
    repeats = allowance // ncv - 3
    if repeats < 1:
        ncv, repeats = min(allowance // 4, dim), 1
    if ncv < min(MIN_NCV, dim):
        raise BudgetTooSmallError(
            f"a spectral density needs at least {4 * MIN_NCV} products, its share is {allowance}; "
            "raise --budget."
        )
    return ncv, repeats


def both_densities(A: CountedOperator, allowance: int, seed: int) -> dict[str, Any]:
    """Linear and log-scale densities of ``A``, each within half of ``allowance`` products."""
    ncv, repeats = density_plan(allowance // 2, A.shape[0])
    grid, density = lanczos_approximate_spectrum(A, ncv, NUM_POINTS, num_repeats=repeats, seed=seed)
    log_grid, log_density = lanczos_approximate_log_spectrum(
        A, ncv, NUM_POINTS, num_repeats=repeats, epsilon=EPSILON, seed=seed + 1
    )
    return {
        "ncv": ncv,
        "num_repeats": repeats,
        "epsilon": EPSILON,
        "grid": grid.tolist(),
        "density": density.tolist(),
        "log_grid": log_grid.tolist(),
        "log_density": log_density.tolist(),
    }


def spectral_densities(context: AnalysisContext) -> Findings:
    """Spectral densities of the Hessian and the GGN, half the share each (a quarter per scale)."""
    findings = Findings(
        functions=["curvkit.lanczos_approximate_spectrum", "curvkit.lanczos_approximate_log_spectrum"]
    )
    allowance = context.meter.allowance // len(MATRICES)

    def compute(name: str) -> dict[str, Any]:
        return both_densities(context.operator(name), allowance, context.seed)

    results = by_matrix(findings, MATRICES, compute)
    figure, axes = new_figure(ncols=2, width=5.0)
    linear, log = axes[0]
    for name, result in results.items():
        findings.numbers[name] = result
        runs = result["num_repeats"]
        label = f"{MATRIX_NAMES[name]} ({runs} Lanczos run{'s' * (runs > 1)} of {result['ncv']})"
        linear.semilogy(result["grid"], _floored(result["density"]), color=COLORS[name], label=label)
        # the density of t = log(|λ| + ε), drawn over |λ| + ε = exp(t) on a log axis
        log.loglog(
            numpy.exp(result["log_grid"]), _floored(result["log_density"]), color=COLORS[name], label=label
        )
    linear.set_xlabel("eigenvalue λ")
    linear.set_ylabel("density (log scale)")
    linear.set_title("Spectral density")
    log.set_xlabel(f"|λ| + {EPSILON:g}")
    log.set_ylabel("density of log(|λ| + ε)")
    log.set_title("Spectral density, logarithmic scale")
    linear.legend(fontsize="small")
    findings.figures.append(
        saved(
            context,
            figure,
            "spectral_densities.png",
            "The height of a curve is the fraction of eigenvalues near that value (smoothed Lanczos "
            "quadrature): left over the eigenvalues themselves, right over their magnitudes on a log "
            "axis, where the bulk near zero and the few large outliers show side by side.",
            wide=True,
        )
    )
    return findings


def _floored(density: list[float]) -> numpy.ndarray:
    """The density with values below 10⁻⁶ of its peak raised there, so that log axes stay readable."""
    values = numpy.asarray(density)
    return numpy.maximum(values, 1e-6 * values.max())
