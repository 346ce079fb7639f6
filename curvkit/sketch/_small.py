"""The small dense linear algebra of the recoveries: cores of size ``k × k``, on the operator's device.

Everything here runs in the operator's dtype on its device (no float64 detour, no NumPy): the
cores are as accurate as the measurements they come from.
"""

from __future__ import annotations

import torch
from torch import Tensor

ROTATION_SLICE = 2**12
"""Columns of a ``[k, n]`` basis rotated at a time by :func:`rotate_rows_` (a ``[k, 4096]`` temporary)."""


def symmetrized(C: Tensor) -> Tensor:
    """``(C + Cᵀ) / 2``: a core that is symmetric in exact arithmetic, made so in floating point.

    ``torch.linalg.eigh`` reads one triangle only, so rounding in the other would be dropped
    unevenly instead of averaged.
    """
    return (C + C.T) / 2


def pinv(M: Tensor, rcond: float) -> Tensor:
    r"""The pseudo-inverse of ``M`` with singular values below ``rcond · σ_max`` treated as zero.

    Through an SVD, so it behaves the same on every device (torch's CUDA ``lstsq`` driver,
    ``gels``, ignores ``rcond`` and assumes full rank).
    """
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    keep = rcond * S.max() < S if S.numel() else S > 0
    inverse = torch.where(keep, 1 / torch.where(keep, S, torch.ones_like(S)), torch.zeros_like(S))
    return (Vh.T * inverse) @ U.T


def lstsq(M: Tensor, B: Tensor, rcond: float) -> Tensor:
    r"""The minimum-norm least-squares solution of ``M X = B``, regularized by ``rcond``."""
    return pinv(M, rcond) @ B


def sorted_eigh(C: Tensor, by_mag: bool) -> tuple[Tensor, Tensor]:
    """Eigenpairs of the symmetrized ``C``, by descending magnitude (``by_mag``) or value."""
    values, vectors = torch.linalg.eigh(symmetrized(C))
    order = torch.argsort(values.abs() if by_mag else values, descending=True, stable=True)
    return values[order], vectors[:, order]


def rotate_rows_(rows: Tensor, V: Tensor) -> Tensor:
    r"""``rows ← Vᵀ rows`` in place: ``Q ← Q V`` for a basis stored as rows ``Qᵀ``.

    The ``[k, n]`` rows are rotated a slice of columns at a time, so the result needs no second
    ``[k, n]`` block.
    """
    Vt = V.T.contiguous()
    for start in range(0, rows.shape[1], ROTATION_SLICE):
        piece = rows[:, start : start + ROTATION_SLICE]
        piece.copy_(Vt @ piece)
    return rows
