r"""Eigendecompositions of factors whose rank is bounded: ``O(n² r)`` instead of ``O(n³)``.

A Kronecker factor summed from ``r`` rows (a linear layer's inputs from ``r`` samples, a
convolution's patches from ``r`` positions) has rank at most ``r``. Where ``r ≪ n`` (the
benchmark CNN's ``2048²`` input factor from 128 samples; a ResNet's ``4608²`` factors from a
batch of 8 images), its eigenvectors of nonzero eigenvalues span the range of ``F Ω`` for a
random ``Ω`` of ``r + p`` columns, and Rayleigh–Ritz on that range gives them; any orthonormal
basis of the rest has eigenvalue 0. Steps, all matrix products and thin factorizations:

1. ``Q = orth(F · orth(F Ω))``: the range, with one power step (without it, the rebuilt factor's
   error was several times that of ``eigh``; with it, the same);
2. ``B = Qᵀ F Q = W Λ Wᵀ``, the Ritz pairs ``(λ, Q W)``;
3. the complement of ``U = Q W``: the trailing columns of the Householder reflectors
   ``H_1 ⋯ H_w = I − V T Vᵀ`` of ``U``'s QR factorization, ``I[:, w:] − V T V[w:]ᵀ``.

The result is checked: if ``‖F Q − Q B‖_F`` exceeds the rounding of ``F``'s entries
(:func:`residual_tolerance`), the range missed part of ``F`` (its rank exceeds the bound given)
and :func:`low_rank_eigh` returns ``None``. Halko, Martinsson & Tropp (2011), "Finding structure
with randomness", for the range; Schreiber & Van Loan (1989) for ``T``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

OVERSAMPLING = 10
"""Columns of ``Ω`` beyond the rank bound."""

LOW_RANK_FRACTION = 0.25
"""Largest ``(rank + OVERSAMPLING) / n`` for which the route pays (design notes, "Eigendecompositions of
low-rank factors"): its products cost ``O(n² w)`` against ``eigh``'s ``O(n³)``."""

SEED = 0
"""``Ω``'s seed: the decomposition of a factor is the same on every call and process."""


def takes_low_rank_route(size: int, rank: int | None) -> bool:
    """Whether a factor of ``size`` rows and rank at most ``rank`` is decomposed by :func:`low_rank_eigh`."""
    return rank is not None and rank + OVERSAMPLING <= LOW_RANK_FRACTION * size


def residual_tolerance(size: int, dtype: torch.dtype) -> float:
    """``‖F Q − Q B‖_F / ‖F‖_F`` accepted: ``√n`` roundings of the factor's dtype (float32's at most).

    A half-precision factor's rounding is too coarse to tell a missed part of ``F`` from it: such
    factors take the full decomposition whenever their rounding shows.
    """
    eps = min(torch.finfo(dtype).eps, torch.finfo(torch.float32).eps)
    return math.sqrt(size) * eps


def low_rank_eigh(factor: Tensor, rank: int, rounded_as: torch.dtype) -> tuple[Tensor, Tensor] | None:
    """Eigenvalues (ascending) and eigenvectors of the symmetric ``factor`` of rank at most ``rank``.

    Args:
        factor: ``[n, n]``, float64, symmetric.
        rank: An upper bound of its rank.
        rounded_as: The dtype whose rounding its entries carry (a float32 factor converted):
            the residual is held to :func:`residual_tolerance` of it.

    Returns:
        ``(values, vectors)`` as :func:`torch.linalg.eigh` gives them (the ``n − w`` zeros
        first, ``w = rank + OVERSAMPLING``), or ``None`` if the residual exceeds the tolerance.
    """
    pairs = ritz_pairs(factor, rank, rounded_as)
    if pairs is None:
        return None
    values, ritz_vectors = pairs
    vectors = torch.cat([orthonormal_complement(ritz_vectors), ritz_vectors], dim=1)
    return torch.cat([values.new_zeros(factor.shape[0] - values.shape[0]), values]), vectors


def ritz_pairs(factor: Tensor, rank: int, rounded_as: torch.dtype) -> tuple[Tensor, Tensor] | None:
    """The eigenpairs of ``factor`` on its range: ``w = rank + OVERSAMPLING`` values and ``[n, w]`` vectors.

    Steps 1 and 2 of the module docstring; ``None`` if the residual exceeds the tolerance (see
    :func:`low_rank_eigh`). Every other eigenvalue of ``factor`` is 0.
    """
    size, width = factor.shape[0], rank + OVERSAMPLING
    tolerance = residual_tolerance(size, rounded_as)
    generator = torch.Generator(device=factor.device).manual_seed(SEED)
    test = torch.randn(size, width, generator=generator, dtype=factor.dtype, device=factor.device)
    basis = torch.linalg.qr(factor @ torch.linalg.qr(factor @ test).Q).Q
    image = factor @ basis
    projected = basis.T @ image
    projected = (projected + projected.T) / 2
    norm = torch.linalg.matrix_norm(factor)
    if float(torch.linalg.matrix_norm(image - basis @ projected)) > tolerance * float(norm):
        return None
    values, rotation = torch.linalg.eigh(projected)
    return values, basis @ rotation


def orthonormal_complement(columns: Tensor) -> Tensor:
    """An orthonormal basis ``[n, n − w]`` of the complement of the orthonormal ``columns`` ``[n, w]``.

    The Householder reflectors of ``columns = H_1 ⋯ H_w R`` multiply to ``I − V T Vᵀ`` (``V`` unit
    lower trapezoidal, ``T`` upper triangular, built column by column as LAPACK's ``larft``
    does, a reflector with ``τ = 0`` included); its trailing ``n − w`` columns are the basis.
    """
    width = columns.shape[1]
    reflectors, tau = torch.geqrf(columns)
    V = reflectors.tril(-1)
    V.diagonal().fill_(1.0)
    gram = V.T @ V
    T = torch.zeros(width, width, dtype=columns.dtype, device=columns.device)
    for index in range(width):
        T[index, index] = tau[index]
        if index:
            T[:index, index] = -tau[index] * (T[:index, :index] @ gram[:index, index])
    complement = -(V @ (T @ V[width:].T))
    complement[width:].diagonal().add_(1.0)
    return complement
