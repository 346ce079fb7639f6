"""Random test vectors for the randomized estimators, drawn column by column from a ``torch.Generator``.

Every randomized routine in :mod:`curvkit.linalg` takes ``seed``: an ``int``, a
``torch.Generator`` (used as is, so consecutive calls continue its stream), or ``None``. ``None``
draws one seed from NumPy's global generator, so that ``numpy.random.seed(0)`` makes results
repeatable, as in the examples of the API reference; the global torch RNG is never touched.

A test matrix ``Ω = [ω_1, …, ω_m] ∈ ℝⁿˣᵐ`` is never held whole (``n`` may be 10⁷): the generator
gives one seed per column, and column ``j`` is drawn from its seed alone, directly in the
operator's dtype. Any block of columns can so be drawn, or drawn again, at any time, and an
estimate does not depend on the width of the blocks its products are taken in.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy
import torch
from torch import Tensor

from curvkit._pages import empty_block
from curvkit.linear_operator import LinearOperator

Seed = int | torch.Generator | None

DISTRIBUTIONS = ("rademacher", "normal")

_BITS_PER_WORD = 64

_SAME_SIZE_INTEGERS = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}
"""Floating-point dtypes whose ``±1`` are written by bit operations (:func:`_signs_from_bits_`)."""

_ONE_BITS = {
    torch.float64: 0x3FF0000000000000,
    torch.float32: 0x3F800000,
    torch.float16: 0x3C00,
    torch.bfloat16: 0x3F80,
}
"""The bit pattern of ``1.0``; ``-1.0`` differs from it in the sign bit only."""


def _signed(value: int, bits: int) -> int:
    """``value`` (an unsigned bit pattern of ``bits`` bits) as the signed integer with those bits."""
    return value - (1 << bits) if value >> (bits - 1) else value


SIGN_SLICE = 2**18
"""Entries (1 MiB in float32) that :func:`_signs_from_bits_` writes per slice."""


def _signs_from_bits_(rows: Tensor, words: Tensor) -> None:
    """Write ``±1`` into ``rows`` (``[m, n]``): entry ``i`` is ``+1`` where bit ``i`` of ``words`` is set.

    Bit ``i`` is bit ``i mod b`` of the ``b``-bit integer ``i // b`` of ``words`` (``[m, ⌈n/64⌉]``
    int64, read as ``b``-bit integers in memory order; on a little-endian machine that is bit
    ``i mod 8`` of byte ``i // 8``, whatever ``b``, so every dtype gets the same signs). Each
    integer is shifted once per entry so that the entry's bit lands on the sign bit; masking it,
    inverting it and setting the other bits to those of ``1.0`` makes the float ``±1``: three
    integer operations per entry, written in place (faster than a lookup of eight signs per byte
    in a table, design notes, "Measurements behind the code"), a slice of :data:`SIGN_SLICE`
    entries at a time, so that the second and third operation find the entries in cache.
    """
    integer = _SAME_SIZE_INTEGERS[rows.dtype]
    bits = torch.iinfo(integer).bits
    sign = _signed(1 << (bits - 1), bits)
    minus_one = _signed((1 << (bits - 1)) | _ONE_BITS[rows.dtype], bits)
    shifts = torch.arange(bits - 1, -1, -1, dtype=integer, device=rows.device)
    num_entries = rows.shape[1]
    whole = num_entries // bits
    integers = words.view(integer)
    main = rows[:, : whole * bits].view(integer).unflatten(1, (whole, bits))

    def signs_(piece: Tensor, piece_integers: Tensor) -> Tensor:
        torch.bitwise_left_shift(piece_integers.unsqueeze(-1), shifts, out=piece)
        return piece.bitwise_and_(sign).bitwise_xor_(minus_one)  # sign bit inverted, the rest 1.0's

    step = max(1, SIGN_SLICE // (rows.shape[0] * bits))  # words per slice: three passes in cache
    for start in range(0, whole, step):
        signs_(main[:, start : start + step], integers[:, start : min(start + step, whole)])
    if whole * bits < num_entries:
        last = signs_(main.new_empty(rows.shape[0], bits), integers[:, whole])
        rows[:, whole * bits :] = last[:, : num_entries - whole * bits].view(rows.dtype)


def check_distribution(distribution: str, name: str = "distribution") -> str:
    """Return ``distribution`` if it is one of :data:`DISTRIBUTIONS`.

    Raises:
        ValueError: If it is not.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"{name} must be one of {DISTRIBUTIONS}, got {distribution!r}.")
    return distribution


def as_generator(seed: Seed, device: torch.device | None = None) -> torch.Generator:
    """Turn ``seed`` into a ``torch.Generator`` (on ``device`` when built here).

    Args:
        seed: A generator (returned unchanged), an integer seed, or ``None`` (one seed drawn
            from NumPy's global random state).
        device: Device for a newly built generator. Default: CPU.

    Returns:
        The generator.

    Raises:
        TypeError: If ``seed`` is of another type.
    """
    if isinstance(seed, torch.Generator):
        return seed
    if seed is None:
        seed = int(numpy.random.randint(0, 2**31 - 1))
    if isinstance(seed, bool) or not isinstance(seed, (int, numpy.integer)):
        raise TypeError(f"seed must be an int, a torch.Generator or None, got {type(seed).__name__}.")
    generator = torch.Generator(device=device if device is not None else "cpu")
    generator.manual_seed(int(seed))
    return generator


_MASK64 = 2**64 - 1


def _mixed(value: int) -> int:
    """SplitMix64's finalizer: a bijection of 64-bit integers that scatters nearby inputs."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def purpose_generator(seed: Seed, purpose: str, device: torch.device | None = None) -> torch.Generator:
    """:func:`as_generator` for one purpose of a routine: an integer seed gives a stream of its own.

    Routines whose results are combined must not share random numbers: a sketch and the error
    test that certifies it, say, when the caller passes both the same integer. An integer seed
    is therefore mixed with the name of the purpose (SplitMix64 of the seed plus a checksum of
    the name) before it seeds the generator, so that equal seeds for different purposes give
    unrelated streams. A ``torch.Generator`` is used as it is (its stream continues from call
    to call), and ``None`` draws a fresh seed.

    Args:
        seed: ``int``, ``torch.Generator`` or ``None``.
        purpose: A name of the use (``'sketch'``, ``'error test'``).
        device: Device for a newly built generator. Default: CPU.

    Returns:
        The generator.

    Raises:
        TypeError: If ``seed`` is of another type.
    """
    if isinstance(seed, torch.Generator) or seed is None:
        return as_generator(seed, device)
    if isinstance(seed, bool) or not isinstance(seed, (int, numpy.integer)):
        raise TypeError(f"seed must be an int, a torch.Generator or None, got {type(seed).__name__}.")
    mixed = _mixed((int(seed) + (zlib.crc32(purpose.encode()) << 32)) & _MASK64)
    return as_generator(mixed & (2**63 - 1), device)


class RandomColumns:
    """The columns of a random test matrix ``Ω ∈ ℝⁿˣᵐ``, i.i.d. entries with ``E[ω ωᵀ] = I``.

    The constructor takes ``m`` seeds from ``generator``; column ``j`` is drawn from seed ``j``
    on the generator's device, in ``dtype``, then moved to ``device``. Rademacher columns come
    from 64 random bits per draw (each bit becomes a sign by integer operations), so they
    cost about as much as writing the column; normal ones cost one draw per entry.

    Args:
        num_rows: ``n``.
        num_columns: ``m``.
        distribution: ``'rademacher'`` (±1 with equal probability) or ``'normal'``.
        generator: Source of the columns' seeds; advanced by ``m`` draws.
        dtype: Floating-point dtype of the columns.
        device: Device of the columns (``None``: the generator's).

    Raises:
        ValueError: If ``distribution`` is unknown.

    Example:
        >>> import torch
        >>> columns = RandomColumns(4, 3, "rademacher", torch.Generator().manual_seed(0), torch.float64, None)
        >>> torch.equal(columns.block(1, 3), columns.block(0, 3)[:, 1:])  # any block, same values
        True
    """

    def __init__(
        self,
        num_rows: int,
        num_columns: int,
        distribution: str,
        generator: torch.Generator,
        dtype: torch.dtype,
        device: torch.device | None,
    ):
        self.distribution = check_distribution(distribution)
        self.num_rows, self.num_columns, self.dtype = num_rows, num_columns, dtype
        self._draw_device = generator.device
        self.device = torch.device(device) if device is not None else generator.device
        seeds = torch.randint(
            -(2**63), 2**63 - 1, (num_columns,), generator=generator, device=generator.device
        )
        self._seeds = seeds.tolist()
        self._column_generator = torch.Generator(device=generator.device)

    def block(self, start: int, stop: int) -> Tensor:
        """Columns ``start, …, stop - 1``: an ``[n, stop - start]`` tensor (a contiguous one, transposed).

        Each column's numbers come from its own seed (one generator call per column); the signs
        of a whole block are then looked up at once, so the work per column is one draw (a few
        small operations per column cost more than the draw on a loaded multi-threaded CPU).
        """
        return self._drawn_rows(start, stop).to(self.device).T

    def _drawn_rows(self, start: int, stop: int, out: Tensor | None = None) -> Tensor:
        """The block's columns as rows ``[stop - start, n]`` on the generator's device (in ``out``)."""
        rows = (
            empty_block((stop - start, self.num_rows), self.dtype, self._draw_device) if out is None else out
        )
        seeds = self._seeds[start:stop]
        if self.distribution == "normal":
            for row, seed in zip(rows, seeds):
                torch.randn(row.shape, generator=self._column_generator.manual_seed(seed), out=row)
            return rows
        num_words = -(-self.num_rows // _BITS_PER_WORD)
        words = torch.empty(len(seeds), num_words, dtype=torch.int64, device=self._draw_device)
        for row, seed in zip(words, seeds):
            generator = self._column_generator.manual_seed(seed)
            torch.randint(-(2**63), 2**63 - 1, (num_words,), generator=generator, out=row)
        if self.dtype in _SAME_SIZE_INTEGERS:
            _signs_from_bits_(rows, words)
        else:  # an integer dtype (skerch's signs): the float32 signs, converted
            signs = rows.new_empty(rows.shape, dtype=torch.float32)
            _signs_from_bits_(signs, words)
            rows.copy_(signs)
        return rows

    def draw_into(self, rows: Tensor, start: int) -> Tensor:
        """Write columns ``start, …, start + len(rows) - 1`` into the rows ``[len, n]``; return them.

        Lets a routine draw test vectors into memory it holds anyway (the rows that their
        products will replace), instead of a block of their own.
        """
        if rows.device == self._draw_device:
            return self._drawn_rows(start, start + rows.shape[0], out=rows)
        return rows.copy_(self._drawn_rows(start, start + rows.shape[0]))

    def blocks(self, width: int, buffer: Tensor | None = None) -> Iterator[tuple[int, Tensor]]:
        """Consecutive blocks of at most ``width`` columns: ``(start, block)`` pairs.

        The blocks are drawn into one buffer: a block is overwritten by the next, so a caller
        that keeps one past its turn clones it. (A fresh block of ``10⁷``-long columns costs
        its pages as much again as drawing it: the allocator maps blocks that large anew.)

        Args:
            width: Columns per block.
            buffer: Rows ``[min(width, m), n]`` of this dtype and device to draw into (memory the
                caller is done with: :func:`spent_rows`), instead of a new block.
        """
        for start in range(0, self.num_columns, width):
            stop = min(start + width, self.num_columns)
            if buffer is None:
                buffer = empty_block((stop - start, self.num_rows), self.dtype, self.device)
            yield start, self.draw_into(buffer[: stop - start], start).T


def spent_rows(product: Tensor, num_rows: int, dtype: torch.dtype, apart_from: Tensor) -> Tensor | None:
    """Rows ``[num_rows, n]`` in the memory of a block product the caller is done with, where that can be.

    A routine that frees a product of ``10⁷``-long columns and then allocates a block for its
    next random vectors pays for the block's fresh pages (the allocator returns blocks that large
    to the system and maps zeroed pages anew); drawing into the product's pages costs nothing.
    A product belongs to its caller (as ``y = A @ x; y += 1`` takes it to); it is reused where
    it is the transpose of at least ``num_rows`` contiguous rows of ``dtype`` (the layout of
    curvkit's operators' products) and shares no memory with ``apart_from``, the routine's own
    data on the same device (an operator may return its input, as SciPy's identity does).

    Returns:
        The rows, or ``None``.
    """
    rows = product.T
    if product.dtype != dtype or rows.shape[0] < num_rows or not rows.is_contiguous():
        return None
    if product.device != apart_from.device or _overlap(product, apart_from):
        return None
    return rows[:num_rows]


def _overlap(tensor: Tensor, other: Tensor) -> bool:
    """Whether the storages of two tensors on one device share memory."""
    storage, other_storage = tensor.untyped_storage(), other.untyped_storage()
    start, other_start = storage.data_ptr(), other_storage.data_ptr()
    return start < other_start + other_storage.nbytes() and other_start < start + storage.nbytes()


def block_width(A: LinearOperator, num_columns: int) -> int:
    """Columns per block of random vectors: ``A.columns_per_product``, or all ``num_columns``.

    The routines draw a block, multiply it, reduce the product to what their method keeps, and
    draw the next; so one setting, ``A.max_columns`` (or a limit inside a composite operator),
    bounds the memory of the products and of the routines around them.
    """
    return min(num_columns, A.columns_per_product or num_columns)


def random_block(
    num_rows: int,
    num_columns: int,
    distribution: str,
    generator: torch.Generator,
    dtype: torch.dtype,
    device: torch.device | None,
) -> Tensor:
    """Draw a whole ``[num_rows, num_columns]`` block of :class:`RandomColumns` (for small blocks).

    Args:
        num_rows: Number of rows.
        num_columns: Number of columns.
        distribution: ``'rademacher'`` or ``'normal'``.
        generator: Source of randomness.
        dtype: Floating-point dtype of the block.
        device: Device of the block.

    Returns:
        The random block.

    Raises:
        ValueError: If ``distribution`` is unknown.
    """
    return RandomColumns(num_rows, num_columns, distribution, generator, dtype, device).block(0, num_columns)
