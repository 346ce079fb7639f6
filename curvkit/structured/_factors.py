"""Kronecker factors: the one place that knows how to multiply, decompose and invert them.

A factor is a square matrix ``[n, n]`` or a diagonal given by its entries ``[n]`` (an
``nn.Embedding``'s input factor is diagonal: a dense one of a 50,000-token vocabulary would take
10 GB). ``None`` stands for an identity of known size where an eigenbasis is expected.

Decompositions run in float64 whatever the factors' dtype (a float32 ``eigh`` of a factor with
condition number 10⁶ has eigenvalues wrong in their third digit), and their results are cast back
without subnormal numbers (:func:`cast_back`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor
from torch.nn import functional

from curvkit._boundary import torch_dtype_of
from curvkit._precision import compute_dtype
from curvkit.structured._low_rank import low_rank_eigh, ritz_pairs, takes_low_rank_route

Result = TypeVar("Result")


def checked_factor(factor: object, name: str, finite_diagonal: bool = False) -> Tensor:
    """``factor`` if it is a finite real tensor of shape ``[n, n]`` or ``[n]``.

    ``finite_diagonal``: check finiteness on the diagonal only, for a factor known to be
    positive semi-definite (a sum of outer products), whose entries the diagonal bounds:
    ``|F_ij| ≤ √(F_ii F_jj)`` (one pass over ``n`` entries instead of ``n²``).

    Raises:
        TypeError: If it is not a real floating-point tensor.
        ValueError: If it has another shape or a non-finite entry, naming ``name``.
    """
    if not isinstance(factor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(factor).__name__}.")
    torch_dtype_of(factor.dtype)  # refuses complex dtypes with curvkit's message
    if not factor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {factor.dtype}.")
    if factor.ndim not in (1, 2) or (factor.ndim == 2 and factor.shape[0] != factor.shape[1]):
        raise ValueError(
            f"{name} must be a square matrix [n, n] or a diagonal [n], got shape {list(factor.shape)}."
        )
    # the extremes are non-finite iff an entry is (nan propagates): one pass, no [n, n] mask
    checked = factor.diagonal() if finite_diagonal and factor.ndim == 2 else factor
    if checked.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(checked))).all()):
        raise ValueError(f"{name} has non-finite entries (inf or nan).")
    return factor


def is_symmetric(factor: Tensor) -> bool:
    """Whether ``factor`` equals its transpose exactly (a diagonal always does)."""
    return factor.ndim == 1 or torch.equal(factor, factor.T)


SYMMETRIZE_TILE = 256
"""Side of the tiles :func:`symmetrize_` pairs up (a tile pair stays in cache; the fastest of
64–512 on a ``2049²`` factor, design notes, "Measurements behind the code")."""

SHORT_PRODUCT_ROWS = 16
"""Rows of a stack up to which :func:`kronecker_on_matrices` multiplies by a symmetric ``R``
itself rather than by ``Rᵀ`` (on the CPU; design notes, "Short products")."""

CACHE_LINE = 64
"""Bytes of a cache line: the padding :func:`new_factor` gives a row."""

CACHE_SET_PERIOD = 512
"""Bytes: rows a multiple of this apart put a tile's column on a few cache sets, so reading a
tile transposed misses the cache on every row (a ``2048²`` factor mirrored by tiles took twice
as long as a ``2049²`` one)."""


def new_factor(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialized ``[size, size]`` factor, for sums and copies that :func:`symmetrize_` finishes.

    On the CPU, where its rows would lie a multiple of :data:`CACHE_SET_PERIOD` bytes apart and
    it spans more than one tile, each row gets one cache line of padding (a view of
    ``[size, size + pad]``), so that :func:`symmetrize_`'s tiles do not miss the cache (design
    notes, "Padded rows"). Products read the view as it is.
    """
    element_size = torch.empty(0, dtype=dtype).element_size()
    row_bytes = size * element_size
    if torch.device(device).type != "cpu" or row_bytes % CACHE_SET_PERIOD or size <= SYMMETRIZE_TILE:
        return torch.empty(size, size, dtype=dtype, device=device)
    pad = CACHE_LINE // element_size
    return torch.empty(size, size + pad, dtype=dtype, device=device)[:, :size]


def symmetrized(
    factor: Tensor, dtype: torch.dtype | None = None, device: torch.device | None = None
) -> Tensor:
    """``(F + Fᵀ) / 2``: factors summed over batches in floating point are symmetric only to rounding.

    On a copy of ``factor`` in :func:`new_factor`'s layout, converted to ``dtype`` and moved to
    ``device`` on the way (default: ``factor``'s); a diagonal is returned converted.
    """
    dtype, device = dtype or factor.dtype, device or factor.device
    if factor.ndim == 1:
        return factor.to(dtype=dtype, device=device)
    return symmetrize_(new_factor(factor.shape[0], dtype, device).copy_(factor))


def symmetrize_(factor: Tensor, mean: bool = True, scale: float = 1.0) -> Tensor:
    """``F ← (F + Fᵀ) / 2`` in place, bitwise symmetric (addition commutes), ``factor`` returned.

    ``mean=False`` mirrors the lower triangle onto the upper one instead (the triangle
    ``torch.linalg.eigh`` reads; the upper one is not read, so it may hold anything): for sums
    that are formed in the lower triangle only. ``scale``: multiply by it on the way (the tiles
    are in cache then; a separate pass reads the whole factor again). Tile pair by tile pair
    (:data:`SYMMETRIZE_TILE`): a transposed copy of a whole factor reads it across cache lines,
    and a new ``[n, n]`` tensor costs page faults (design notes, "Measurements behind the
    code"). Factors allocated by :func:`new_factor` keep the tiles' columns off a few cache sets.
    """
    tile = SYMMETRIZE_TILE
    for start in range(0, factor.shape[0], tile):
        rows = slice(start, start + tile)
        for other in range(0, start, tile):
            lower, upper = factor[rows, other : other + tile], factor[other : other + tile, rows]
            if mean:
                lower.add_(upper.T).mul_(0.5 * scale)
            elif scale != 1.0:
                lower.mul_(scale)
            upper.copy_(lower.T)
        _symmetrize_diagonal_block_(factor[rows, rows], mean, scale)
    return factor


def _symmetrize_diagonal_block_(block: Tensor, mean: bool, scale: float) -> None:
    if mean:
        block.copy_(block + block.T).mul_(0.5 * scale)
        return
    block.tril_().add_(block.T.triu(1))  # Bᵀ's strictly upper triangle: the lower one mirrored
    if scale != 1.0:
        block.mul_(scale)


def transposed(factor: Tensor | None) -> Tensor | None:
    return factor if factor is None or factor.ndim == 1 else factor.T


def dense(factor: Tensor) -> Tensor:
    """The factor as a matrix."""
    return torch.diag(factor) if factor.ndim == 1 else factor


def kronecker_product(
    left: Tensor | None, right: Tensor | None, X: Tensor, rows: int, columns: int, symmetric: bool = False
) -> Tensor:
    """``(L ⊗ R) X`` for ``X`` of shape ``[rows · columns, k]``, row-major: ``vec(L M Rᵀ)`` per column.

    Each column of ``X`` is a matrix ``M ∈ ℝ^{rows × columns}`` flattened row by row; ``None``
    is the identity. The columns are taken as the ``[k, rows, columns]`` stack ``Xᵀ`` — a view
    when ``X`` is stored column by column, as block diagonals hand their blocks over — and the
    result is returned the same way: two batched matrix products and no copy, as fast as the
    bare ``L M Rᵀ`` (a row-major route with two transposing copies took 1.3 times as long).
    ``symmetric``: ``R`` equals ``Rᵀ`` exactly (:func:`kronecker_on_matrices`).
    """
    k = X.shape[1]
    stacked = X.T.reshape(k, rows, columns)
    return kronecker_on_matrices(left, right, stacked, symmetric).reshape(k, rows * columns).T


def kronecker_on_matrices(
    left: Tensor | None, right: Tensor | None, M: Tensor, symmetric: bool = False
) -> Tensor:
    """``L M_c Rᵀ`` for each matrix of the stack ``M`` ``[k, rows, columns]`` (``None``: identity).

    ``symmetric``: ``R`` equals ``Rᵀ`` exactly, so ``M R`` is the same product; on the CPU it
    is taken for stacks of at most :data:`SHORT_PRODUCT_ROWS` rows in all, where the BLAS packs
    a transposed ``R`` at a cost the few rows do not repay (design notes, "Short products").
    """
    if left is not None:
        M = left @ M if left.ndim == 2 else left.unsqueeze(1) * M
    if right is not None:
        if right.ndim == 1:
            return M * right
        short = M.device.type == "cpu" and M.numel() <= SHORT_PRODUCT_ROWS * M.shape[-1]
        M = M @ (right if symmetric and short else right.T)
    return M


# ------------------------------------------------------------------------------ closed forms
def trace64(factor: Tensor) -> Tensor:
    return (factor if factor.ndim == 1 else factor.diagonal()).to(torch.float64).sum()


def squared_frobenius64(factor: Tensor) -> Tensor:
    return factor.to(torch.float64).square().sum()


def slogdet64(factor: Tensor, psd: bool) -> tuple[Tensor, Tensor]:
    """``(sign, log|det F|)`` in float64; for a PSD factor from its clamped eigenvalues.

    A PSD factor that is singular up to rounding has eigenvalues of either sign around zero, where
    an LU factorization (``torch.linalg.slogdet``) may return a negative sign and make
    ``logdet`` ``nan``; clamped, they give ``-inf``.
    """
    if factor.ndim == 1:
        values = factor.to(torch.float64)
    elif psd:
        values = torch.linalg.eigvalsh(factor.to(torch.float64)).clamp(min=0.0)
    else:
        return torch.linalg.slogdet(factor.to(torch.float64))
    return values.sign().prod(), values.abs().log().sum()


# ------------------------------------------------------------------------------ decompositions
def cast_back(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """``tensor`` (float64) in ``dtype``, entries below the smallest normal number of ``dtype`` set to 0.

    Subnormal numbers make a CPU's matrix products fall back to microcode, an order of magnitude
    slower per operation, and a float64 decomposition's values that small are rounding (EKFAC's
    eigenvalues of directions that a few examples do not span; design notes, "KFAC at ResNet-18
    size").
    """
    return functional.hardshrink(tensor.to(dtype), torch.finfo(dtype).tiny)  # one pass, fused


def scaled_to_one(tensor: Tensor, floor: float) -> tuple[Tensor, float]:
    """On a CPU ``(T / s, s)``, ``s`` the power of two at or below ``max |T|``; entries below ``floor``: 0.

    For float32 matrix products of numbers far below 1 (second moments of a mean loss's gradients):
    their products underflow into subnormal numbers, which a CPU's matrix products handle in
    microcode, an order of magnitude slower per operation (design notes, "KFAC at ResNet-18
    size"). Scaled to 1 (exactly: a power of two) they stay normal, down to ``floor`` (``ε``,
    ``ε²``: what the caller's rounding makes irrelevant). ``(T, 1)`` elsewhere (a GPU multiplies
    subnormals at full speed, and the scale would cost a host synchronization), for an empty
    ``T`` and for zeros or non-finite entries.
    """
    if tensor.device.type != "cpu" or tensor.numel() == 0:
        return tensor, 1.0
    smallest, largest = torch.aminmax(tensor)  # not vector_norm(·, inf): slower on a CPU
    largest = max(-float(smallest), float(largest))
    if largest == 0.0 or not math.isfinite(largest):
        return tensor, 1.0
    scale = 2.0 ** math.floor(math.log2(largest))
    return functional.hardshrink(tensor * (1.0 / scale), floor), scale  # one pass, fused


def eigh64(factor: Tensor, rank: int | None = None) -> tuple[Tensor, Tensor | None]:
    """Eigenvalues (float64, negatives clamped to 0) and eigenvectors (factor's dtype; ``None``: identity).

    Clamped because KFAC's factors are positive semi-definite and their negative eigenvalues are
    rounding: kept, they turn ``(λ_G λ_A + δ)⁻¹`` negative or infinite for small damping.
    ``rank``: an upper bound of the factor's rank (``None``: none known); well below its size,
    the decomposition costs ``O(n² rank)`` (:mod:`curvkit.structured._low_rank`, which falls
    back to the full one if the bound is wrong) and the eigenvalues beyond the rank are 0.
    """
    if factor.ndim == 1:
        return factor.to(torch.float64).clamp(min=0.0), None
    factor64 = symmetrized(factor, torch.float64)
    decomposed = None
    if takes_low_rank_route(factor.shape[0], rank):
        decomposed = low_rank_eigh(factor64, rank, factor.dtype)
    values, vectors = torch.linalg.eigh(factor64) if decomposed is None else decomposed
    return values.clamp(min=0.0), cast_back(vectors, factor.dtype)


def once_per_factor(function: Callable[..., Result]) -> Callable[..., Result]:
    """``function(factor, *rest)`` computed once per factor, however many blocks hold it.

    Factors are the same where their memory, shape, strides, dtype and device are (blocks may
    hold different views of one tensor: a separate bias's output factor is its weight's) and
    ``rest`` is too.
    """
    results: dict[tuple, tuple[Tensor, Result]] = {}

    def once(factor: Tensor, *rest: object) -> Result:
        key = (factor.data_ptr(), tuple(factor.shape), factor.stride(), factor.dtype, factor.device, *rest)
        if key not in results:  # the factor kept beside its result: no other tensor takes its memory
            results[key] = (factor, function(factor, *rest))
        return results[key][1]

    return once


def damped_inverse(
    factor: Tensor, damping: float, retry_double_precision: bool, name: str, rank: int | None = None
) -> Tensor:
    """``(F + δ I)⁻¹`` by Cholesky (for a diagonal: entry by entry), symmetric, in ``F``'s dtype.

    Half precision factorizes in float32 (:mod:`curvkit._precision`). If the Cholesky
    factorization fails in that precision, it is retried in float64 (with a warning) when
    ``retry_double_precision`` is set. ``rank``: an upper bound of ``F``'s rank; well below its
    size (and with ``δ > 0``), the inverse is formed from ``F``'s eigenpairs on its range in
    ``O(n² rank)`` (:func:`_low_rank_damped_inverse`).

    Raises:
        torch.linalg.LinAlgError: If ``F + δ I`` is not positive definite (in float64 too).
    """
    if factor.ndim == 1:
        damped = factor + damping
        if not bool((damped > 0).all()):
            raise torch.linalg.LinAlgError(_not_positive_definite(name, damping))
        return 1.0 / damped
    if damping > 0 and takes_low_rank_route(factor.shape[0], rank):
        inverse = _low_rank_damped_inverse(factor, damping, rank)
        if inverse is not None:
            return inverse
    dtype = compute_dtype(factor.dtype)
    damped = factor.to(dtype) + damping * torch.eye(factor.shape[0], dtype=dtype, device=factor.device)
    cholesky, info = torch.linalg.cholesky_ex(damped)
    if bool(info != 0) and retry_double_precision and dtype != torch.float64:
        warnings.warn(
            f"The Cholesky factorization of {name} + {damping:g} I failed in {dtype}; retrying in float64.",
            UserWarning,
            stacklevel=2,
        )
        cholesky, info = torch.linalg.cholesky_ex(damped.to(torch.float64))
    if bool(info != 0):
        raise torch.linalg.LinAlgError(_not_positive_definite(name, damping))
    return symmetrized(torch.cholesky_inverse(cholesky)).to(factor.dtype)


def _low_rank_damped_inverse(factor: Tensor, damping: float, rank: int) -> Tensor | None:
    """``(F + δ I)⁻¹ = I/δ − U diag(λ / (δ (λ + δ))) Uᵀ`` from ``F``'s eigenpairs ``(λ, U)`` on its range.

    In float64, returned in ``F``'s dtype; ``None`` where the rank bound is wrong
    (:func:`curvkit.structured._low_rank.ritz_pairs`).
    """
    pairs = ritz_pairs(symmetrized(factor, torch.float64), rank, factor.dtype)
    if pairs is None:
        return None
    values, vectors = pairs
    values = values.clamp(min=0.0)
    inverse = (vectors * (-values / (damping * (values + damping)))) @ vectors.T
    inverse.diagonal().add_(1.0 / damping)
    return symmetrized(inverse, factor.dtype)


def _not_positive_definite(name: str, damping: float) -> str:
    return (
        f"{name} + {damping:g} I is not positive definite: its inverse does not exist. Use a "
        "positive damping, or use_exact_damping=True, which inverts G ⊗ A + damping I."
    )
