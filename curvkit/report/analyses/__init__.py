"""The analyses of a report, in page order: each is one function ``(AnalysisContext) -> Findings``.

An analysis raises :class:`~curvkit.report.context.NotAvailableError` where a capability is missing
from this curvkit, :class:`~curvkit.report.context.NotApplicableError` or
:class:`~curvkit.report.budget.BudgetTooSmallError` where it does not apply, and anything else where
it fails; the runner reports each in the page and ``metrics.json`` and goes on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from curvkit.report.analyses.dense import dense
from curvkit.report.analyses.densities import densities
from curvkit.report.analyses.eigenvalues import eigenvalues
from curvkit.report.analyses.gradient import loss_and_gradient
from curvkit.report.analyses.kfac import kfac
from curvkit.report.analyses.parameters import parameters
from curvkit.report.analyses.sketch import sketch
from curvkit.report.analyses.traces import traces
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
    Analysis("parameters", "Parameters per layer", parameters, budgeted=False),
    Analysis("loss_and_gradient", "Loss and gradient", loss_and_gradient, budgeted=False),
    Analysis("eigenvalues", "Top eigenvalues of the Hessian and the GGN", eigenvalues, budgeted=True),
    Analysis("traces", "Traces of the Hessian, the GGN and the empirical Fisher", traces, budgeted=True),
    Analysis("densities", "Spectral densities of the Hessian and the GGN", densities, budgeted=True),
    Analysis("kfac", "KFAC against the GGN", kfac, budgeted=True),
    Analysis("sketch", "Sketched eigendecomposition of the Hessian", sketch, budgeted=True),
    Analysis("dense", "Dense matrices side by side", dense, budgeted=False),
)
"""Every analysis, in the order of the page."""
