"""Figures without pyplot: matplotlib ``Figure`` objects saved as PNGs, no global state touched."""

from __future__ import annotations

from typing import Any

from curvkit.report.context import AnalysisContext, Figure
from curvkit.report.settings import ReportInputError

COLORS = {"hessian": "tab:blue", "ggn": "tab:orange", "ef": "tab:green", "kfac": "tab:red"}
DPI = 100


def require_matplotlib() -> None:
    """Raise :class:`ReportInputError` with the install command if matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ReportInputError(
            "curvkit report draws with matplotlib: pip install 'curvkit[report]'."
        ) from None


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.6) -> tuple[Any, Any]:
    """A figure of ``nrows × ncols`` panels, each ``width × height`` inches.

    Returns:
        The ``matplotlib.figure.Figure`` and its axes as a 2-d array.
    """
    from matplotlib.figure import Figure as MatplotlibFigure

    figure = MatplotlibFigure(figsize=(width * ncols, height * nrows), layout="constrained")
    return figure, figure.subplots(nrows, ncols, squeeze=False)


def saved(context: AnalysisContext, figure: Any, file: str, caption: str, wide: bool = False) -> Figure:
    """Write ``figure`` to ``file`` (a PNG in the report's directory) and describe it.

    Args:
        context: The analysis's context (its output directory).
        figure: A matplotlib figure.
        file: File name, ending in ``.png``.
        caption: One sentence on how to read it.
        wide: Show it across the page's width.

    Returns:
        The record the page and ``metrics.json`` list.
    """
    figure.savefig(context.figure_path(file), dpi=DPI)
    return Figure(file, caption, wide)
