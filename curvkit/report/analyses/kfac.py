"""KFAC against the GGN: its relative Frobenius error (``apost_error``) and its top eigenvalues."""

from __future__ import annotations

from curvkit.report.a_posteriori import certified_relative_error, error_plan
from curvkit.report.analyses.eigenvalues import top_eigenpairs
from curvkit.report.budget import BudgetTooSmallError
from curvkit.report.context import KFAC_ERROR, AnalysisContext, Findings, NotAvailableError, SummaryRow
from curvkit.report.figures import COLORS, new_figure, saved
from curvkit.report.statistics import CONFIDENCE


def kfac_against_ggn(context: AnalysisContext) -> Findings:
    """KFAC (``KFACLinearOperator``, ``fisher_type='type-2'``) against the GGN.

    Half the share goes to KFAC's top eigenvalues (``lanczos_eigsh``), the rest to
    ``apost_error(GGN, KFAC)`` (each test vector costs a product with both). The exact error,
    from the dense matrices, is in the dense analysis for small models.

    Raises:
        NotAvailableError: If this curvkit has no ``KFACLinearOperator``.
    """
    findings = Findings(functions=["curvkit.KFACLinearOperator", "curvkit.lanczos_eigsh"])
    K = context.operator("kfac")
    half = context.meter.allowance // 2
    eigen = top_eigenpairs(K, context.top_k, half, context.seed)
    findings.numbers["eigenvalues"] = eigen
    values = eigen["eigenvalues"]
    findings.summary.append(
        SummaryRow(
            "largest eigenvalue of KFAC",
            f"{values[0]:.6g} (residual {eigen['residual_norms'][0]:.1e})",
            "curvkit.lanczos_eigsh",
        )
    )
    try:
        num_meas = error_plan(context.meter.left, per_measurement=2)
        error = certified_relative_error(context.operator("ggn"), K, num_meas, context.seed)
    except (NotAvailableError, BudgetTooSmallError) as reason:
        findings.notes.append(f"Relative error against the GGN not estimated: {reason}")
        findings.numbers["relative_error"] = {"status": "not computed", "message": str(reason)}
    else:
        findings.functions.append("curvkit.sketch.a_posteriori.apost_error")
        findings.numbers["relative_error"] = error
        low, high = error["interval"]
        findings.summary.append(
            SummaryRow(
                KFAC_ERROR,
                f"{error['relative_error']:.3g} ({CONFIDENCE:.0%}: {low:.3g} to {high:.3g})",
                "apost_error",
            )
        )
    figure, axes = new_figure(width=6.0)
    ax = axes[0, 0]
    ax.plot(range(1, len(values) + 1), values, "o", color=COLORS["kfac"], label="KFAC")
    ax.set_xlabel("i (largest first)")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"Top {len(values)} eigenvalues of KFAC")
    ax.legend()
    findings.figures.append(
        saved(
            context,
            figure,
            "kfac_eigenvalues.png",
            "KFAC's largest eigenvalues, largest first: compare them with the GGN's in the eigenvalue plot; "
            "KFAC approximates the GGN block by block with Kronecker products.",
        )
    )
    return findings
