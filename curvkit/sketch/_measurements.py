"""Test matrices and the blocked passes over an operator that measure them.

A test matrix ``Ω ∈ ℝⁿˣᵏ`` is never held whole: its columns are drawn (Rademacher, Gaussian:
:class:`~curvkit.linalg._random.RandomColumns`, one seed per column) or computed (SSRFT) a
block at a time, and a block can be drawn again later at no more than the cost of drawing. The
generator lives on the CPU, so ``Ω`` is the same matrix whatever the block width and whatever the
operator's device (skerch reseeds every block, so its ``Ω`` changes with ``meas_blocksize``).

Measurements are kept as rows (``Yᵀ``, ``[k, m]``): each block's product is written into its rows,
the layout the orthonormalization and the small matrix products work on without copies.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor

from curvkit.linalg._random import RandomColumns
from curvkit.linear_operator import LinearOperator
from curvkit.sketch.ssrft import SSRFTLinOp

NOISE_TYPES = ("rademacher", "gaussian", "ssrft")


class MeasurementMatrix(Protocol):
    """The columns of ``Ω``, drawn or computed a block at a time."""

    num_columns: int

    def block(self, start: int, stop: int) -> Tensor:
        """Columns ``start, …, stop - 1``: ``[n, stop - start]``."""
        ...


class _SSRFTColumns:
    def __init__(self, num_rows: int, num_columns: int, generator: torch.Generator, dtype, device):
        self.num_columns = num_columns
        self._ssrft = SSRFTLinOp((num_rows, num_columns), generator, dtype, device)

    def block(self, start: int, stop: int) -> Tensor:
        return self._ssrft.columns(start, stop)


def entry_variance(omega: MeasurementMatrix) -> float:
    """``E[ω_ij²]``: 1 for Rademacher and Gaussian columns, ``1/n`` for the SSRFT's orthonormal ones.

    ``‖A Ω‖_F² ≈ k · E[ω²] · ‖A‖_F²``, so the sketch's own norm estimates the operator's.
    """
    return 1.0 / omega._ssrft.shape[0] if isinstance(omega, _SSRFTColumns) else 1.0


def check_noise_type(noise_type: str) -> str:
    """``noise_type`` if it is one of :data:`NOISE_TYPES`.

    Raises:
        ValueError: Otherwise.
    """
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"noise_type must be one of {NOISE_TYPES}, got {noise_type!r}.")
    return noise_type


def measurement_matrix(
    noise_type: str, num_rows: int, num_columns: int, generator: torch.Generator, dtype, device
) -> MeasurementMatrix:
    """A test matrix ``[num_rows, num_columns]`` of ``noise_type``, taking its randomness from ``generator``.

    Rademacher and Gaussian columns have i.i.d. entries of unit variance; SSRFT columns are
    orthonormal (see :mod:`curvkit.sketch.ssrft`).
    """
    if check_noise_type(noise_type) == "ssrft":
        return _SSRFTColumns(num_rows, num_columns, generator, dtype, device)
    distribution = "normal" if noise_type == "gaussian" else "rademacher"
    return RandomColumns(num_rows, num_columns, distribution, generator, dtype, device)


def blocks(omega: MeasurementMatrix, width: int) -> Iterator[tuple[int, Tensor]]:
    """Consecutive blocks of at most ``width`` columns of ``test``: ``(start, block)`` pairs."""
    for start in range(0, omega.num_columns, width):
        yield start, omega.block(start, min(start + width, omega.num_columns))


def measured_rows(A: LinearOperator, omega: MeasurementMatrix, width: int, transpose: bool = False) -> Tensor:
    """``(A Ω)ᵀ`` (or ``(Aᵀ Ω)ᵀ``) as rows ``[k, m]``, the products taken ``width`` columns at a time."""
    out_dim = A.shape[1] if transpose else A.shape[0]
    rows = torch.empty(omega.num_columns, out_dim, dtype=A.dtype, device=A.device)
    for start, block in blocks(omega, width):
        product = A.rmatmat(block) if transpose else A.matmat(block)
        rows[start : start + block.shape[1]] = product.T
    return rows


def projected(rows: Tensor, omega: MeasurementMatrix, width: int) -> Tensor:
    """``Qᵀ Ω`` for rows ``Qᵀ`` (``[r, n]``): ``[r, k]``, ``Ω`` drawn again a block at a time."""
    result = rows.new_empty(rows.shape[0], omega.num_columns)
    for start, block in blocks(omega, width):
        result[:, start : start + block.shape[1]] = rows @ block
    return result
