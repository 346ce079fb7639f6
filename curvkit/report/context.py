"""What an analysis gets (:class:`AnalysisContext`) and what it gives back (:class:`Findings`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from curvkit import EFLinearOperator, GGNLinearOperator, HessianLinearOperator, LinearOperator
from curvkit.report.budget import BudgetTooSmallError, CountedOperator, ProductMeter
from curvkit.report.problem import Problem
from curvkit.report.settings import ReportSettings

MATRIX_NAMES = {"hessian": "Hessian", "ggn": "GGN", "ef": "empirical Fisher", "kfac": "KFAC"}
KFAC_ERROR = "‖GGN − KFAC‖_F / ‖GGN‖_F"


def the(name: str) -> str:
    """``'the Hessian'``, ``'the GGN'``, ``'the empirical Fisher'``, ``'KFAC'``: for the summary's labels."""
    return MATRIX_NAMES[name] if name == "kfac" else f"the {MATRIX_NAMES[name]}"


class NotAvailableError(Exception):
    """A capability the analysis needs is not in this version of curvkit (its import failed)."""

    def __init__(self, what: str):
        super().__init__(f"{what} is not available in this version of curvkit.")


class NotApplicableError(Exception):
    """The analysis does not apply here (``--no-dense``, a model too large for dense matrices)."""


@dataclasses.dataclass
class Figure:
    """A PNG in the report's directory and one sentence on how to read it.

    Attributes:
        file: Its file name.
        caption: The sentence.
        wide: Whether the page shows it across the full width (several panels).
    """

    file: str
    caption: str
    wide: bool = False


@dataclasses.dataclass
class SummaryRow:
    """One line of the page's summary table.

    Attributes:
        quantity: What it is; an exact value goes into the line of the same ``quantity``.
        value: The number as text.
        function: What computed it.
        exact: Whether it is exact (from a dense matrix) rather than an estimate.
    """

    quantity: str
    value: str
    function: str
    exact: bool = False


@dataclasses.dataclass
class Findings:
    """What an analysis found: every number, its figures, its lines of the summary, notes.

    Attributes:
        numbers: JSON values (numbers, lists of numbers, strings) for ``metrics.json``.
        figures: The PNGs it wrote.
        summary: Its lines of the summary table.
        functions: The curvkit functions that computed the numbers (the page names them).
        notes: Sentences for the page, such as a part that was not available.
        table: Optional rows (header first) shown under the analysis's heading.
    """

    numbers: dict[str, Any] = dataclasses.field(default_factory=dict)
    figures: list[Figure] = dataclasses.field(default_factory=list)
    summary: list[SummaryRow] = dataclasses.field(default_factory=list)
    functions: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    table: list[list[str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class AnalysisResult:
    """An analysis as the page and ``metrics.json`` show it.

    Attributes:
        key: Its name in ``metrics.json``.
        title: Its heading.
        status: ``'ok'``, ``'failed'``, ``'not available'`` (missing from this curvkit) or
            ``'skipped'`` (does not apply, or its share of the budget is too small).
        message: Why, unless ``'ok'``.
        findings: What it found (empty unless ``'ok'``).
        products: Products with curvature operators it spent.
        seconds: Its wall-clock time.
    """

    key: str
    title: str
    status: str
    message: str
    findings: Findings
    products: int
    seconds: float


class AnalysisContext:
    """The problem, the settings and the operators of one analysis, its products counted.

    Operators are built once per report and shared (``operators``); :meth:`operator` hands each
    analysis a :class:`~curvkit.report.budget.CountedOperator` charged to its own ``meter``.

    Args:
        problem: What is analysed.
        settings: The report's settings.
        out: Directory the figures go to.
        meter: Counts this analysis's products against its share.
        operators: Operators built so far, by name; shared between analyses.
    """

    def __init__(
        self,
        problem: Problem,
        settings: ReportSettings,
        out: Path,
        meter: ProductMeter,
        operators: dict[str, LinearOperator],
    ):
        self.problem = problem
        self.settings = settings
        self.out = out
        self.meter = meter
        self._operators = operators

    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def top_k(self) -> int:
        """``--top-k``, at most the dimension."""
        return min(self.settings.top_k, self.problem.dim)

    def operator(self, name: str) -> CountedOperator:
        """The curvature operator ``name`` (``'hessian'``, ``'ggn'``, ``'ef'``, ``'kfac'``), counted.

        Raises:
            NotAvailableError: For ``'kfac'``, if this curvkit has no ``KFACLinearOperator``.
        """
        if name not in self._operators:
            self._operators[name] = self._built(name)
        return CountedOperator(self._operators[name], self.meter)

    def _built(self, name: str) -> LinearOperator:
        p = self.problem
        common = (p.model, p.loss_function, p.param_list, p.data)
        if name == "kfac":
            return _kfac_operator(p)
        kind = {"hessian": HessianLinearOperator, "ggn": GGNLinearOperator, "ef": EFLinearOperator}[name]
        return kind(*common, batch_size_fn=p.batch_size_fn, process_group=p.process_group)

    def figure_path(self, file: str) -> Path:
        return self.out / file


def _kfac_operator(problem: Problem) -> LinearOperator:
    """KFAC of the GGN (``fisher_type='type-2'``, the exact output-space Hessian).

    Raises:
        NotAvailableError: If this curvkit has no ``KFACLinearOperator``.
    """
    try:
        from curvkit import KFACLinearOperator
    except ImportError:
        raise NotAvailableError("KFACLinearOperator") from None
    reduction = getattr(problem.loss_function, "reduction", "mean")
    return KFACLinearOperator(
        problem.model,
        problem.loss_function,
        problem.param_list,
        problem.data,
        fisher_type="type-2",
        loss_average=None if reduction == "sum" else "batch",
        process_group=problem.process_group,
    )


def by_matrix(findings: Findings, names: list[str], compute: Any) -> dict[str, Any]:
    """Run ``compute(name)`` for each matrix; where one fails, the others go on.

    A failure is noted in ``findings`` (``numbers[name]`` says why); if every matrix fails, the
    first exception is raised again, so that the analysis takes its status.

    Returns:
        What ``compute`` returned, by the names that succeeded.
    """
    results, first_error = {}, None
    for name in names:
        try:
            results[name] = compute(name)
        except Exception as error:
            first_error = first_error or error
            message = one_line(error)
            findings.numbers[name] = {"status": status_of(error), "message": message}
            findings.notes.append(f"{MATRIX_NAMES[name]}: {message}")
    if not results and first_error is not None:
        raise first_error
    return results


def status_of(error: BaseException) -> str:
    """``'not available'``, ``'skipped'`` or ``'failed'``: what an exception makes of an analysis."""
    if isinstance(error, NotAvailableError):
        return "not available"
    if isinstance(error, (NotApplicableError, BudgetTooSmallError)):
        return "skipped"
    return "failed"


def one_line(error: BaseException) -> str:
    """An exception as one line: ``Type: message`` (the message alone for curvkit's own kinds)."""
    message = " ".join(str(error).split())
    if status_of(error) != "failed":
        return message
    return f"{type(error).__name__}: {message}"
