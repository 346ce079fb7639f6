"""The analyses of a report, in page order: each is one function ``(AnalysisContext) -> Findings``.

An analysis raises :class:`~curvkit.report.context.NotAvailableError` where a capability is missing
from this curvkit, :class:`~curvkit.report.context.NotApplicableError` or
:class:`~curvkit.report.budget.BudgetTooSmallError` where it does not apply, and anything else where
it fails; the runner reports each in the page and ``metrics.json`` and goes on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from curvkit.report.analyses.dense import dense_matrices
from curvkit.report.analyses.densities import spectral_densities
from curvkit.report.analyses.eigenvalues import top_eigenvalues
from curvkit.report.analyses.gradient import loss_and_gradient
from curvkit.report.analyses.kfac import kfac_against_ggn
from curvkit.report.analyses.parameters import parameter_table
from curvkit.report.analyses.sketch import sketched_eigendecomposition
from curvkit.report.analyses.traces import trace_estimates
from curvkit.report.context import AnalysisContext, Findings


@dataclasses.dataclass(frozen=True)
class Analysis:
    """One section of the report.

    Attributes:
        key: Its name in ``metrics.json`` and in :data:`curvkit.report.budget.SHARES`.
        title: Its heading on the page.
        run: The function that computes it.
        budgeted: Whether it spends a share of ``--budget``.
    """

    key: str
    title: str
    run: Callable[[AnalysisContext], Findings]
    budgeted: bool


ANALYSES = (
    Analysis("parameters", "Parameters per layer", parameter_table, budgeted=False),
    Analysis("loss_and_gradient", "Loss and gradient", loss_and_gradient, budgeted=False),
    Analysis("eigenvalues", "Top eigenvalues of the Hessian and the GGN", top_eigenvalues, budgeted=True),
    Analysis(
        "traces", "Traces of the Hessian, the GGN and the empirical Fisher", trace_estimates, budgeted=True
    ),
    Analysis("densities", "Spectral densities of the Hessian and the GGN", spectral_densities, budgeted=True),
    Analysis("kfac", "KFAC against the GGN", kfac_against_ggn, budgeted=True),
    Analysis(
        "sketch", "Sketched eigendecomposition of the Hessian", sketched_eigendecomposition, budgeted=True
    ),
    Analysis("dense", "Dense matrices side by side", dense_matrices, budgeted=False),
)
"""Every analysis, in the order of the page."""
