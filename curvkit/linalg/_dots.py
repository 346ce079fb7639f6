r"""Inner products and norms over long vectors whose rounding error does not grow with their length.

A sum of :math:`n` terms accumulated one after the other in precision :math:`\varepsilon` has an
error bound of :math:`n\varepsilon` times the sum of magnitudes, and some CPU kernels come close to
it in float32: ``torch.linalg.vector_norm`` and matrix products lose digits in proportion to the
length of a vector (figures in ``docs/design-notes.md``, "Float32 accuracy of Lanczos and CG").
Lanczos normalizes and orthogonalizes with such sums, so its basis lost orthogonality as the
number of parameters grew.

Here every sum is split into blocks of :data:`BLOCK` consecutive entries: each block is summed by
the fast kernel in the working precision, with an error bounded by about ``BLOCK · ε`` times the
block's sum of magnitudes whatever :math:`n`, and the block sums are added in float64, where
:math:`n / \text{BLOCK}` terms cost nothing in accuracy. The block sums read the data once, as the
plain kernels do; only the ``n / BLOCK`` partial results are converted. The bound is reached
when a block sums many small terms next to a large one (a vector close to a coordinate vector);
``exact=True`` then converts the entries to float64 first, in slices that stay in cache, for a
few times the cost: products of float32 numbers are exact in float64, and so are the sums to a
relative :math:`n \cdot 10^{-16}`. That is for small Gram matrices computed once.
"""

from __future__ import annotations

import torch
from torch import Tensor

BLOCK = 256
"""Entries summed in the working precision before the float64 sum (larger blocks are no faster)."""

GATHER_SLICE = 2**18
"""Entries per row of one batched block product against several others (:func:`_block_sums`; a
multiple of ``BLOCK``)."""

SLICE = 2**15
"""Entries per row converted to float64 at a time by ``row_dots(..., exact=True)`` (fewer for many rows)."""

WIDE_BLOCK = 4096
"""Entries per partial sum of a Gram matrix with many rows (see :func:`row_dots`)."""

WIDE_RESULT = 2**16
"""Result entries above which :func:`row_dots` sums one ``WIDE_BLOCK`` slice at a time."""

SLICE_ENTRIES = 2**22
"""Most entries of all rows together converted at a time: 32 MiB of float64, so that the Gram
matrix of a wide block (thousands of rows, a sketch) does not convert hundreds of MiB at once."""


def _blocks(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """``x`` with dimension ``dim`` split into ``[n // BLOCK, BLOCK]`` (a view), and the remaining entries."""
    n = x.shape[dim]
    main = n - n % BLOCK
    return x.narrow(dim, 0, main).unflatten(dim, (main // BLOCK, BLOCK)), x.narrow(dim, main, n - main)


def row_dots(rows: Tensor, others: Tensor, exact: bool = False) -> Tensor:
    r"""``rows @ others.T`` in float64: :math:`\mathbf{R}\mathbf{W}^\top` for rows ``[m, n]`` and ``[p, n]``.

    Results of more than ``WIDE_RESULT`` entries (Gram matrices of sketches) are summed over
    slices of ``WIDE_BLOCK`` entries instead of ``BLOCK``: the rounding bound is ``WIDE_BLOCK · ε``
    times the sum of magnitudes, still independent of ``n``, for one matrix product per slice.

    Args:
        rows: ``[m, n]`` (any strides, e.g. the transpose of a column block).
        others: ``[p, n]``, or a vector ``[n]``.
        exact: Sum the products in float64 (a few times slower; see the module).

    Returns:
        ``[m, p]`` (``[m]`` for a vector ``others``), float64, on the inputs' device.
    """
    vector = others.ndim == 1
    others = others.unsqueeze(0) if vector else others
    n = rows.shape[1]
    if exact:
        result = rows.new_zeros(rows.shape[0], others.shape[0], dtype=torch.float64)
        step = max(BLOCK, min(SLICE, SLICE_ENTRIES // max(rows.shape[0], others.shape[0], 1)))
        for start in range(0, n, step):
            width = min(step, n - start)
            piece = rows.narrow(1, start, width).double()
            other_piece = piece if others is rows else others.narrow(1, start, width).double()
            result += piece @ other_piece.T
    elif n <= BLOCK:
        result = (rows @ others.T).double()
    elif rows.shape[0] * others.shape[0] > WIDE_RESULT:
        # thousands of rows: the batched partial sums below would take n / BLOCK result-sized
        # blocks; one matrix product per slice of WIDE_BLOCK entries, added in float64, instead
        if others is rows:
            return _wide_gram(rows)
        result = rows.new_zeros(rows.shape[0], others.shape[0], dtype=torch.float64)
        for start in range(0, n, WIDE_BLOCK):
            result += (rows[:, start : start + WIDE_BLOCK] @ others[:, start : start + WIDE_BLOCK].T).double()
    else:
        result = _block_sums(rows, others)
    return result.squeeze(1) if vector else result


def _block_sums(rows: Tensor, others: Tensor) -> Tensor:
    """``rows @ others.T`` from products of ``BLOCK`` entries, added in float64.

    Against several others in slices of ``GATHER_SLICE`` entries, so that the partial sums
    ``[n / BLOCK, p, m]`` stay small: whole, they are a 70 MB temporary for a 20-row Gram
    matrix of ``1.1 · 10⁷`` entries, whose fresh pages cost more than the products (design
    notes, "Random vectors in blocks").
    """
    n = rows.shape[1]
    step = n if others.shape[0] == 1 else GATHER_SLICE
    result = None
    for start in range(0, n, step):  # the slices hold whole blocks: the same sums in any order
        blocks, tail = _blocks(rows[:, start : start + step], 1)  # [m, nb, BLOCK]
        other_blocks, other_tail = _blocks(others[:, start : start + step], 1)  # [p, nb, BLOCK]
        # [nb, p, BLOCK] @ [nb, BLOCK, m]: the faster orientation of the batched kernel on the CPU
        partial = torch.bmm(other_blocks.transpose(0, 1), blocks.permute(1, 2, 0))
        sums = partial.sum(0, dtype=torch.float64).T + (tail @ other_tail.T).double()  # tail < BLOCK
        result = sums if result is None else result.add_(sums)
    return result


def _wide_gram(rows: Tensor) -> Tensor:
    """``rows @ rows.T`` of many rows: the blocks at and below the diagonal, mirrored (9/16 of the work)."""
    m, n = rows.shape
    result = rows.new_zeros(m, m, dtype=torch.float64)
    step = -(-m // 8)
    for top in range(0, m, step):
        bottom = min(top + step, m)
        for start in range(0, n, WIDE_BLOCK):
            piece = rows[:, start : start + WIDE_BLOCK]
            result[top:bottom, :bottom] += (piece[top:bottom] @ piece[:bottom].T).double()
    lower = result.tril()
    return lower + lower.T - torch.diag_embed(lower.diagonal())


def column_dots(X: Tensor, Y: Tensor) -> Tensor:
    r"""Column-wise inner products :math:`\mathbf{x}_j^\top\mathbf{y}_j` of blocks ``[n, k]``, in float64.

    The entrywise products are formed ``SLICE`` rows at a time, so that they stay in cache
    instead of making a ``[n, k]`` temporary (design notes, "Measurements behind the code").
    Blocks come in two layouts: ``[n, k]`` row-major (a product's result) or the transpose of
    ``[k, n]`` rows (random vectors, bases). A slice of the other operand is copied into the
    layout of ``X`` first (in cache): multiplying across layouts strides through memory (design
    notes, "Measurements behind the code").
    """
    if X.shape[0] <= BLOCK:
        return (X * Y).sum(0).double()
    if X.shape[1] > 1 and X.T.is_contiguous() and Y.T.is_contiguous():
        return _row_pair_dots(X.T, Y.T)
    by_rows = X.shape[1] > 1 and X.stride(0) == 1  # X is the transpose of contiguous rows
    result = X.new_zeros(X.shape[1], dtype=torch.float64)
    for start in range(0, X.shape[0], SLICE):
        x, y = X[start : start + SLICE], Y[start : start + SLICE]
        if by_rows:
            blocks, tail = _blocks(x.T * y.T.contiguous(), 1)  # [k, nb, BLOCK]
            result += blocks.sum(2).sum(1, dtype=torch.float64) + tail.sum(1).double()
        else:
            blocks, tail = _blocks(x * y.contiguous(), 0)  # [nb, BLOCK, k]
            result += blocks.sum(1).sum(0, dtype=torch.float64) + tail.sum(0).double()
    return result


def _row_pair_dots(rows: Tensor, others: Tensor) -> Tensor:
    """``(rows * others).sum(1)`` of contiguous ``[k, n]`` rows, in float64, from ``BLOCK``-long dots.

    Each row's blocks are a batch of ``1 × BLOCK`` by ``BLOCK × 1`` matrix products: the block
    sums come straight from the kernel, without the entrywise products in memory (faster than
    multiplying slices and summing them: ``docs/benchmarks.md``, "The linear algebra at 10⁷
    parameters").
    """
    k, n = rows.shape
    main = n - n % BLOCK
    partial = rows.new_empty(k, main // BLOCK)
    for row, other, out in zip(rows, others, partial):
        torch.bmm(row[:main].view(-1, 1, BLOCK), other[:main].view(-1, BLOCK, 1), out=out.view(-1, 1, 1))
    return partial.sum(1, dtype=torch.float64) + (rows[:, main:] * others[:, main:]).sum(1).double()


def norms(x: Tensor, dim: int = -1) -> Tensor:
    r"""Euclidean norms :math:`\|\mathbf{x}\|_2` along ``dim``, in float64 (``dim`` removed).

    Each block's norm comes from ``torch.linalg.vector_norm`` in the working precision (no
    squared copy of ``x``); their squares add up in float64.
    """
    dim = dim % x.ndim
    if x.shape[dim] <= BLOCK:
        return torch.linalg.vector_norm(x, dim=dim).double()
    blocks, tail = _blocks(x, dim)
    partial = torch.linalg.vector_norm(blocks, dim=dim + 1).double()  # dim now counts the blocks
    return (partial.square().sum(dim) + torch.linalg.vector_norm(tail, dim=dim).double().square()).sqrt()


def norm(x: Tensor) -> float:
    """:func:`norms` of a whole vector ``[n]``, as a Python float."""
    return float(norms(x, 0))
