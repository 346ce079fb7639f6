"""Dense Hessian, GGN, empirical Fisher and KFAC side by side, for small models, with exact numbers."""

from __future__ import annotations

from typing import Any

import numpy
import torch
from torch import Tensor

from curvkit.report.context import (
    KFAC_ERROR,
    MATRIX_NAMES,
    AnalysisContext,
    Findings,
    NotApplicableError,
    SummaryRow,
    by_matrix,
    the,
)
from curvkit.report.figures import new_figure, saved

MAX_DENSE_DIM = 5000
"""Largest ``D`` whose dense matrices the report forms (``D`` products and ``D²`` numbers each)."""
MATRICES = ["hessian", "ggn", "ef", "kfac"]
LOG_FLOOR = 1e-5
"""The heat maps show ``log10(|entry| + LOG_FLOOR)``, as the visual tour does."""
MAX_PIXELS = 600
"""Larger matrices are drawn as blocks of entries, each pixel the largest magnitude in its block."""


def dense_matrices(context: AnalysisContext) -> Findings:
    """Form each matrix with ``to_dense()`` (``D`` products each, outside the budget) and draw it.

    Besides the heat maps: exact traces, Frobenius norms, top eigenvalues
    (``torch.linalg.eigvalsh`` in float64) and KFAC's exact relative error against the GGN.

    Raises:
        NotApplicableError: With ``--no-dense``, or if ``D`` exceeds :data:`MAX_DENSE_DIM`.
    """
    dim = context.problem.dim
    if not context.settings.dense:
        raise NotApplicableError("--no-dense.")
    if dim > MAX_DENSE_DIM:
        raise NotApplicableError(
            f"D = {dim:,} parameters is above {MAX_DENSE_DIM:,}: dense matrices only for small models."
        )
    findings = Findings(functions=["LinearOperator.to_dense", "torch.linalg.eigvalsh"])
    matrices = by_matrix(findings, MATRICES, lambda name: context.operator(name).to_dense())
    k = context.top_k
    for name, matrix in matrices.items():
        exact = matrix.double()
        findings.numbers[name] = {
            "trace": float(exact.trace()),
            "frobenius_norm": float(torch.linalg.matrix_norm(exact)),
            "top_eigenvalues": torch.linalg.eigvalsh(exact).flip(0)[:k].tolist(),
        }
        numbers = findings.numbers[name]
        exact = {"exact": True, "function": "to_dense + torch.linalg"}
        findings.summary.append(
            SummaryRow(f"largest eigenvalue of {the(name)}", f"{numbers['top_eigenvalues'][0]:.6g}", **exact)
        )
        if name != "kfac":
            findings.summary.append(SummaryRow(f"trace of {the(name)}", f"{numbers['trace']:.6g}", **exact))
    if "kfac" in matrices and "ggn" in matrices:
        error = _relative_error(matrices["ggn"], matrices["kfac"])
        findings.numbers["kfac_relative_error"] = error
        findings.summary.append(SummaryRow(KFAC_ERROR, f"{error:.3g}", "to_dense", exact=True))
    findings.table = [["matrix", "trace", "Frobenius norm", "largest eigenvalues"]] + [
        [
            MATRIX_NAMES[name],
            f"{n['trace']:.6g}",
            f"{n['frobenius_norm']:.6g}",
            ", ".join(f"{v:.4g}" for v in n["top_eigenvalues"]),
        ]
        for name, n in findings.numbers.items()
        if isinstance(n, dict) and "trace" in n
    ]
    findings.figures.append(_heat_maps(context, matrices))
    return findings


def _relative_error(reference: Tensor, approximation: Tensor) -> float:
    reference, approximation = reference.double(), approximation.double()
    return float(torch.linalg.matrix_norm(reference - approximation) / torch.linalg.matrix_norm(reference))


def _heat_maps(context: AnalysisContext, matrices: dict[str, Tensor]) -> Any:
    """The matrices' ``log10(|entry| + LOG_FLOOR)`` on one color scale, layer boundaries dashed."""
    dim = context.problem.dim
    block = -(-dim // MAX_PIXELS)  # entries per pixel along each axis
    images = {
        name: numpy.log10(_block_max(matrix.abs(), block) + LOG_FLOOR) for name, matrix in matrices.items()
    }
    low = min(image.min() for image in images.values())
    high = max(image.max() for image in images.values())
    figure, axes = new_figure(ncols=len(images), width=4.2, height=4.0)
    boundaries = numpy.cumsum([entries for _, entries in context.problem.layers])[:-1] / block
    for ax, (name, image) in zip(axes[0], images.items()):
        shown = ax.imshow(image, vmin=low, vmax=high, interpolation="nearest")
        for position in boundaries:
            ax.axhline(position - 0.5, color="w", lw=0.6, ls="--")
            ax.axvline(position - 0.5, color="w", lw=0.6, ls="--")
        ax.set_title(MATRIX_NAMES[name])
        ax.set_xticks([])
        ax.set_yticks([])
    figure.colorbar(shown, ax=list(axes[0]), label=f"log10(|entry| + {LOG_FLOOR:g})", shrink=0.8)
    pixel = "Each pixel is one entry" if block == 1 else f"Each pixel is a block of {block}×{block} entries"
    caption = (
        f"{pixel} of the matrix (rows and columns: the parameters, layer by layer; dashed lines separate "
        "layers), its color the logarithm of the magnitude (the largest in the block) on a scale shared by "
        "all panels" + (": KFAC keeps only blocks on the diagonal." if "kfac" in matrices else ".")
    )
    return saved(context, figure, "dense_matrices.png", caption, wide=True)


def _block_max(magnitudes: Tensor, block: int) -> numpy.ndarray:
    """The largest entry of each ``block × block`` tile (the last ones may be smaller), in float64."""
    if block > 1:
        magnitudes = torch.nn.functional.max_pool2d(magnitudes[None, None].double(), block, ceil_mode=True)[
            0, 0
        ]
    return magnitudes.double().cpu().numpy()
