"""``curvkit report``: analyse a model's curvature end to end and write a self-contained page.

:func:`build_report` runs every analysis of :data:`curvkit.report.analyses.ANALYSES` on the
problem :class:`ReportSettings` names (a built-in MLP or CNN trained on scikit-learn's digits,
or the user's ``(model, loss_function, data)``) and writes ``index.html``, ``metrics.json``
and the PNGs. The report sits on top of curvkit and uses its public API only; ``docs/report.md``
describes what it computes.
"""

from curvkit.report.runner import build_report
from curvkit.report.settings import ReportInputError, ReportSettings

__all__ = ["ReportInputError", "ReportSettings", "build_report"]
