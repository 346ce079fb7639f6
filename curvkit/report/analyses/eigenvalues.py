"""Top eigenvalues of the Hessian and the GGN by Lanczos, with the residual of each pair."""

from __future__ import annotations

from typing import Any

import torch

from curvkit import lanczos_eigsh
from curvkit.report.budget import BudgetTooSmallError, CountedOperator
from curvkit.report.context import MATRIX_NAMES, AnalysisContext, Findings, SummaryRow, by_matrix, the
from curvkit.report.figures import COLORS, new_figure, saved

MATRICES = ["hessian", "ggn"]


def lanczos_tolerance(dtype: torch.dtype) -> float:
    """Relative residual tolerance for ``lanczos_eigsh``: a little above the working precision's reach."""
    return 1e-8 if dtype == torch.float64 else 1e-5


def top_eigenpairs(A: CountedOperator, k: int, allowance: int, seed: int) -> dict[str, Any]:
    r"""The ``k`` largest eigenvalues of ``A`` and the residual norm of each eigenpair.

    ``lanczos_eigsh(A, k, which='LA')`` spends at most ``allowance - k`` products; one more block
    of ``k`` columns gives the residuals :math:`\|\mathbf{A}\mathbf{u}_i - \theta_i\mathbf{u}_i\|`.
    For a symmetric matrix, an eigenvalue lies within that residual of each :math:`\theta_i`.

    Returns:
        ``eigenvalues`` (descending), ``residual_norms``, ``relative_residuals`` (over
        :math:`\max_j |\theta_j|`), ``products`` and ``tol``.

    Raises:
        BudgetTooSmallError: If ``allowance`` cannot hold one Lanczos basis and the two blocks.
        RuntimeError: If Lanczos does not converge within its products.
    """
    dim = A.shape[0]
    ncv = min(dim, max(2 * k + 1, 20))
    needed = ncv + 2 * k  # one Lanczos basis, the Rayleigh–Ritz block and the residual block
    if allowance < needed:
        raise BudgetTooSmallError(
            f"Lanczos for {k} eigenvalues needs at least {needed} products, its share is {allowance}; "
            "raise --budget."
        )
    start = A.meter.used
    tol = lanczos_tolerance(A.dtype)
    values, vectors = lanczos_eigsh(A, k, which="LA", tol=tol, max_matvecs=allowance - k, seed=seed)
    residuals = torch.linalg.vector_norm(A.matmat(vectors) - vectors * values, dim=0)
    order = torch.argsort(values, descending=True)
    values, residuals = values[order].double(), residuals[order].double()
    scale = float(values.abs().max()) or 1.0
    return {
        "eigenvalues": values.tolist(),
        "residual_norms": residuals.tolist(),
        "relative_residuals": (residuals / scale).tolist(),
        "products": A.meter.used - start,
        "tol": tol,
    }


def top_eigenvalues(context: AnalysisContext) -> Findings:
    """Top ``--top-k`` eigenvalues of the Hessian and the GGN (``lanczos_eigsh``), half the share each."""
    findings = Findings(functions=["curvkit.lanczos_eigsh"])
    allowance = context.meter.allowance // len(MATRICES)
    k = context.top_k

    def compute(name: str) -> dict[str, Any]:
        return top_eigenpairs(context.operator(name), k, allowance, context.seed)

    results = by_matrix(findings, MATRICES, compute)
    figure, axes = new_figure(width=6.0)
    ax = axes[0, 0]
    for name, result in results.items():
        findings.numbers[name] = result
        values = result["eigenvalues"]
        ax.errorbar(
            range(1, len(values) + 1),
            values,
            yerr=result["residual_norms"],
            fmt="o",
            color=COLORS[name],
            label=MATRIX_NAMES[name],
            capsize=3,
        )
        findings.summary.append(
            SummaryRow(
                f"largest eigenvalue of {the(name)}",
                f"{values[0]:.6g} (residual {result['residual_norms'][0]:.1e})",
                "curvkit.lanczos_eigsh",
            )
        )
    header = ["i"] + [f"{MATRIX_NAMES[name]}: {column}" for name in results for column in ("θᵢ", "‖Au − θu‖")]
    findings.table = [header] + [
        [str(i + 1)]
        + [
            text
            for result in results.values()
            for text in (f"{result['eigenvalues'][i]:.6g}", f"{result['residual_norms'][i]:.1e}")
        ]
        for i in range(k)
    ]
    ax.set_xlabel("i (largest first)")
    ax.set_ylabel("eigenvalue θᵢ")
    ax.set_title(f"Top {k} eigenvalues")
    ax.legend()
    findings.figures.append(
        saved(
            context,
            figure,
            "eigenvalues.png",
            "Each marker is one of the largest eigenvalues, largest first; a true eigenvalue lies within "
            "the error bar (the residual ‖Au − θu‖, mostly too small to see) of each marker.",
        )
    )
    return findings
