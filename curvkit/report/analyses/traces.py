"""Traces of the Hessian, the GGN and the empirical Fisher by Hutch++, with 95 % error bars."""

from __future__ import annotations

from typing import Any

from curvkit import hutchpp_trace
from curvkit.report.budget import BudgetTooSmallError, CountedOperator
from curvkit.report.context import MATRIX_NAMES, AnalysisContext, Findings, SummaryRow, by_matrix, the
from curvkit.report.figures import COLORS, new_figure, saved
from curvkit.report.statistics import CONFIDENCE, mean_with_error_bar

MATRICES = ["hessian", "ggn", "ef"]
RUNS = 5
"""Independent Hutch++ runs per matrix: their spread gives the error bar."""


def trace_with_error_bar(A: CountedOperator, allowance: int, seed: int) -> dict[str, Any]:
    """Mean of :data:`RUNS` independent ``hutchpp_trace`` runs and its 95 % confidence half-width.

    Each run gets ``allowance // RUNS`` products and a seed of its own; the error bar is the
    Student-t interval of their mean (:func:`curvkit.report.statistics.mean_with_error_bar`).

    Raises:
        BudgetTooSmallError: If a run would get fewer than 3 products (Hutch++'s minimum).
    """
    per_run = min(allowance // RUNS, 3 * A.shape[0])
    if per_run < 3:
        raise BudgetTooSmallError(
            f"{RUNS} Hutch++ runs need at least {3 * RUNS} products, the share is {allowance}; "
            "raise --budget."
        )
    samples = [float(hutchpp_trace(A, per_run, seed=seed + run)) for run in range(RUNS)]
    mean, half_width, standard_error = mean_with_error_bar(samples, CONFIDENCE)
    return {
        "estimate": mean,
        "error_bar": half_width,
        "confidence": CONFIDENCE,
        "standard_error": standard_error,
        "runs": samples,
        "products_per_run": per_run,
    }


def trace_estimates(context: AnalysisContext) -> Findings:
    """Trace estimates of the Hessian, GGN and empirical Fisher, a third of the share each."""
    findings = Findings(functions=["curvkit.hutchpp_trace"])
    allowance = context.meter.allowance // len(MATRICES)

    def compute(name: str) -> dict[str, Any]:
        return trace_with_error_bar(context.operator(name), allowance, context.seed)

    results = by_matrix(findings, MATRICES, compute)
    figure, axes = new_figure(width=6.0, height=2.8)
    ax = axes[0, 0]
    for row, (name, result) in enumerate(results.items()):
        findings.numbers[name] = result
        ax.errorbar(result["estimate"], row, xerr=result["error_bar"], fmt="o", color=COLORS[name], capsize=4)
        findings.summary.append(
            SummaryRow(
                f"trace of {the(name)}",
                f"{result['estimate']:.6g} ± {result['error_bar']:.2g} ({CONFIDENCE:.0%})",
                "curvkit.hutchpp_trace",
            )
        )
    ax.set_yticks(range(len(results)), [MATRIX_NAMES[name] for name in results])
    ax.invert_yaxis()
    ax.set_xlabel("trace")
    ax.set_title(f"Traces: mean of {RUNS} Hutch++ runs, {CONFIDENCE:.0%} confidence intervals")
    findings.table = [["matrix", "estimate", f"± ({CONFIDENCE:.0%})", "runs", "products per run"]] + [
        [
            MATRIX_NAMES[name],
            f"{r['estimate']:.6g}",
            f"{r['error_bar']:.2g}",
            ", ".join(f"{value:.4g}" for value in r["runs"]),
            str(r["products_per_run"]),
        ]
        for name, r in results.items()
    ]
    findings.figures.append(
        saved(
            context,
            figure,
            "traces.png",
            "Each marker is a trace estimate, the mean of independent Hutch++ runs; the bar is the "
            f"{CONFIDENCE:.0%} confidence interval from their spread (the trace is the sum of the "
            "eigenvalues).",
        )
    )
    return findings
