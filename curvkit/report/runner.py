"""Run every analysis on a problem, each failure caught on its own, and write the report."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch.distributed as dist
from tqdm.auto import tqdm

from curvkit.report import launch
from curvkit.report.analyses import ANALYSES, Analysis
from curvkit.report.analyses.dense import MAX_DENSE_DIM
from curvkit.report.budget import ProductMeter, share_of
from curvkit.report.builtin import BUILDERS, trained_builtin
from curvkit.report.context import AnalysisContext, AnalysisResult, Findings, one_line, status_of
from curvkit.report.figures import require_matplotlib
from curvkit.report.metrics import METRICS_FILE, metrics, write_metrics
from curvkit.report.page import PAGE_FILE, write_page
from curvkit.report.problem import Problem, prepared_problem, selected_params
from curvkit.report.settings import ReportSettings
from curvkit.report.user_model import load_user_problem


def build_report(settings: ReportSettings, progressbar: bool = True) -> Path:
    """Analyse the problem the settings name and write ``index.html``, ``metrics.json`` and the PNGs.

    Args:
        settings: What to analyse and how.
        progressbar: Show progress bars (training, curvature products) on stderr.

    Returns:
        The path of ``index.html``.

    Raises:
        ReportInputError: If an option is invalid, the model does not load, or what it returns
            is not ``(model, loss_function, data)``; before anything is written.
    """
    settings = settings.checked()
    require_matplotlib()
    if not launch.launched():
        return _build_report(settings, progressbar)
    initialized = launch.join_process_group(settings.device)
    try:
        if launch.rank() == 0:
            index = _build_report(settings, progressbar)
        else:
            with TemporaryDirectory() as scratch:  # other ranks compute alike but write nothing
                _build_report(dataclasses.replace(settings, out=Path(scratch)), progressbar=False)
            index = settings.out / PAGE_FILE
        dist.barrier()  # no rank tears down the group while another still uses it
        return index
    finally:
        if initialized:
            dist.destroy_process_group()


def _build_report(settings: ReportSettings, progressbar: bool) -> Path:
    """:func:`build_report` on this process (its shard of the data under ``torchrun``)."""
    problem = load_problem(settings, progressbar)
    if launch.launched():
        problem = launch.sharded(problem)
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous_figures(out)
    operators: dict = {}
    results = []
    with tqdm(
        total=_planned_products(problem, settings),
        unit="product",
        desc="curvature products",
        disable=not progressbar,
    ) as bar:
        for analysis in ANALYSES:
            bar.set_postfix_str(analysis.key)
            results.append(run_analysis(analysis, problem, settings, operators, bar))
        bar.total = bar.n  # analyses that were not available or skipped spent nothing
        bar.refresh()
    report = metrics(settings, problem, results)
    write_metrics(out / METRICS_FILE, report)
    return write_page(out / PAGE_FILE, report, results)


def load_problem(settings: ReportSettings, progressbar: bool = True) -> Problem:
    """The built-in problem (trained here) or the user's, on the settings' device and dtype.

    Raises:
        ReportInputError: See :func:`build_report`.
    """
    if settings.builtin:
        selected_params(BUILDERS[settings.model](), settings.model, settings.params)  # before training
        model, loss_function, data, description = trained_builtin(
            settings.model, settings.seed, settings.quick, progressbar
        )
    else:
        model, loss_function, data, description = load_user_problem(settings.model)
    return prepared_problem(settings.model, model, loss_function, data, description, settings)


def run_analysis(
    analysis: Analysis, problem: Problem, settings: ReportSettings, operators: dict, progress: object = None
) -> AnalysisResult:
    """Run one analysis with its share of the budget; whatever it raises becomes its status.

    Args:
        analysis: The analysis.
        problem: What it analyses.
        settings: The report's settings.
        operators: Curvature operators built so far, shared between analyses.
        progress: A progress bar that counts products, or ``None``.

    Returns:
        Its result: ``'ok'`` with its findings, or ``'not available'``, ``'skipped'`` or
        ``'failed'`` with the reason.
    """
    allowance = share_of(analysis.key, settings.product_budget) if analysis.budgeted else None
    meter = ProductMeter(allowance, progress)
    context = AnalysisContext(problem, settings, settings.out, meter, operators)
    start = time.perf_counter()
    status, message, findings = "ok", "", Findings()
    try:
        findings = analysis.run(context)
    except Exception as error:
        status, message = status_of(error), one_line(error)
    return AnalysisResult(
        analysis.key, analysis.title, status, message, findings, meter.used, time.perf_counter() - start
    )


def _planned_products(problem: Problem, settings: ReportSettings) -> int:
    dense = settings.dense and problem.dim <= MAX_DENSE_DIM
    return settings.product_budget + (4 * problem.dim if dense else 0)


def _remove_previous_figures(out: Path) -> None:
    """Delete the PNGs a previous report in ``out`` listed, so that no stale figure stays."""
    try:
        previous = json.loads((out / METRICS_FILE).read_text())
        files = [figure["file"] for figure in previous.get("figures", [])]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return
    for file in files:
        path = out / Path(file).name
        if path.suffix == ".png":
            path.unlink(missing_ok=True)
