r"""Sums of Gram matrices ``Σ_i x_i x_iᵀ`` into a factor's lower triangle, as KFAC's pass adds them.

Three ways, by the rows' layout and number: a product per strip of the lower triangle
(:func:`add_gram`; the triangle's flops, and no per-batch matrix: ``addmm`` into the sums so
far); batched per-sample products for rows whose features are not contiguous (a convolution's
patches and output gradients, without copying them into ``[rows, features]``); and rows of wide
sides held back across batches, so that few rows per batch do not each pass over the whole
factor (:class:`GramBuffer`). The upper triangle is left to whoever finishes the sums
(:func:`curvkit.structured._factors.symmetrize_`). Half-precision rows are summed in float32
(:mod:`curvkit._precision`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from curvkit._precision import compute_dtype
from curvkit.structured._factors import new_factor

GRAM_STRIP = 64
"""Rows of a Gram matrix's strips (:func:`add_gram`), for factors of at least twice as many;
twice as many rows from ``4 * GRAM_STRIP`` on. Narrower strips skip more of the upper triangle,
down to this width; wider ones take fewer products and slices (design notes, "Narrower
strips", "Fewer operations per batch")."""

GRAM_ROWS = 256
"""Rows from which a Gram product of a wide side is left to run as it comes (:class:`GramBuffer`)."""

BUFFERED_FEATURES = 1024
"""Features from which a side's rows are held back across batches (:class:`GramBuffer`): a side
of ``1024²`` float32 entries (4 MiB) no longer stays in a core's caches from batch to batch, and
the MLP's ``784²`` side gained nothing from it, only the buffer's memory."""

PER_SAMPLE_ENTRIES = 2**19
"""Most entries of the per-sample Gram products ``[b, d, d]`` formed at once (chunks of samples;
2 MiB in float32, as a convolution's patches, design notes, "Measurements behind the code")."""


def add_gram(total: Tensor | None, rows: Tensor, alpha: float = 1.0) -> Tensor:
    """``total + alpha Σ_i x_i x_iᵀ`` over the rows of ``rows [..., d]``; in place (new if no ``total``).

    The pass adds every batch's products into the data set's sums (``addmm``), so no per-batch
    Gram matrix is formed and then added. Only the lower triangle is kept up to date (the
    upper one may hold anything): :func:`factor_sums` mirrors it at the end. Half-precision rows
    are summed in float32 (:mod:`curvkit._precision`).
    """
    rows = _leading_in_memory_order(rows)
    # per sample where the rows outnumber the features: a product [d, R] @ [R, d] per sample
    # is efficient then, not where they are fewer (design notes, "Measurements behind the code")
    if rows.ndim >= 3 and rows.stride(-1) != 1 and rows.shape[-2] >= rows.shape[-1]:
        return _add_gram_per_sample(total, rows, alpha)
    flat = rows.reshape(-1, rows.shape[-1]).to(compute_dtype(rows.dtype))
    dim, beta = flat.shape[-1], 0.0 if total is None else 1.0  # beta=0: new entries are ignored
    total = new_factor(dim, flat.dtype, flat.device) if total is None else total
    strip = GRAM_STRIP if dim < 4 * GRAM_STRIP else 2 * GRAM_STRIP
    if dim < 2 * strip:
        return total.addmm_(flat.T, flat, beta=beta, alpha=alpha)
    # the lower triangle by strips of rows, each up to its diagonal tile: 53% of the flops for
    # a 2048² factor in strips of 128 rows, and faster than the whole product on every size
    features = flat.T  # one view for all strips: each strip's slicing is dispatch overhead
    for start in range(0, dim, strip):
        end = min(start + strip, dim)
        total[start:end, :end].addmm_(features[start:end], flat[:, :end], beta=beta, alpha=alpha)
    return total


def _leading_in_memory_order(rows: Tensor) -> Tensor:
    """``rows`` with the axes before the last two ordered by stride, largest first.

    The Gram matrix sums over them in any order; so ordered, they merge without a copy where
    memory allows (a chain's output gradients ``[K, N, …]`` are a view of ``[N, K, …]``).
    """
    if rows.ndim <= 3:
        return rows
    leading = sorted(range(rows.ndim - 2), key=lambda axis: -rows.stride(axis))
    return rows.permute(*leading, rows.ndim - 2, rows.ndim - 1)


def _add_gram_per_sample(total: Tensor | None, rows: Tensor, alpha: float) -> Tensor:
    """:func:`add_gram` for rows whose features are not contiguous.

    A convolution's patches and output gradients are transposed views of ``[B, d, R]``:
    ``Σ_b X_b X_bᵀ`` by batched products on that layout avoids the copy a ``[B·R, d]`` matrix
    needs (design notes, "Measurements behind the code"), in chunks whose ``[b, d, d]`` products stay small.
    """
    columns = rows.reshape(-1, *rows.shape[-2:]).transpose(1, 2)  # [B, d, R]
    dim, dtype = columns.shape[1], compute_dtype(columns.dtype)
    total = new_factor(dim, dtype, columns.device).zero_() if total is None else total
    step = max(1, PER_SAMPLE_ENTRIES // (dim * dim))
    for start in range(0, columns.shape[0], step):
        chunk = columns[start : start + step].to(dtype)
        total.add_(torch.bmm(chunk, chunk.transpose(1, 2)).sum(0), alpha=alpha)
    return total


class GramBuffer:
    """Rows of wide sides held back across batches, so that their Gram products take many at once.

    A Gram product into a ``d × d`` side reads and writes the side's lower triangle whatever the
    number of rows; with few rows per batch (a linear layer after a flattened convolution: 64
    rows into ``2048²``) that pass over memory, not the flops, sets its time. Sides of at least
    :data:`BUFFERED_FEATURES` features therefore collect batches of fewer than
    :data:`GRAM_ROWS` rows, scaled by ``√alpha``, in a buffer of up to ``[GRAM_ROWS, d]`` (a
    copy: no batch's activations are kept; grown by doubling, so that a pass of a few small
    batches holds only their rows), and add them when it is full; :meth:`flush` adds the rest
    after the last batch (design notes, "Rows held back").
    """

    def __init__(self) -> None:
        self._held: dict[int, tuple[Tensor, int]] = {}  # position in the sums: (buffer, rows held)

    def add(self, position: int, total: Tensor | None, rows: Tensor, alpha: float = 1.0) -> Tensor | None:
        """:func:`add_gram` for the side at ``position`` of the flat sums, or its rows held back."""
        features = rows.shape[-1]
        count = rows.numel() // max(features, 1)
        if features < BUFFERED_FEATURES or count >= GRAM_ROWS:
            return add_gram(total, rows, alpha)
        buffer, held = self._held.get(position, (None, 0))
        if buffer is not None and held + count > GRAM_ROWS:
            total, held = add_gram(total, buffer[:held]), 0
        if buffer is None or held + count > buffer.shape[0]:
            # grown by doubling: a pass of few small batches holds a few rows, not GRAM_ROWS
            grown = rows.new_empty(
                min(GRAM_ROWS, 2 * (held + count)), features, dtype=compute_dtype(rows.dtype)
            )
            if held:
                grown[:held].copy_(buffer[:held])
            buffer = grown
        target = buffer[held : held + count]
        target.view(rows.shape).copy_(rows)
        if alpha != 1.0:
            target.mul_(math.sqrt(alpha))
        self._held[position] = (buffer, held + count)
        return total

    def flush(self, totals: list[Tensor]) -> list[Tensor]:
        """The flat sums with the rows still held added (an absent side is an empty tensor)."""
        for position, (buffer, held) in self._held.items():
            if held:
                total = totals[position] if totals[position].numel() else None
                totals[position] = add_gram(total, buffer[:held])
        self._held.clear()
        return totals
