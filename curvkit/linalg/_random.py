"""Random test vectors for the randomized estimators, drawn from a ``torch.Generator``.

Every randomized routine in :mod:`curvkit.linalg` takes ``seed``: an ``int``, a
``torch.Generator`` (used as is, so consecutive calls continue its stream), or ``None``. ``None``
draws one seed from NumPy's global generator, so that ``numpy.random.seed(0)`` makes results
repeatable, as in the examples of the API reference; the global torch RNG is never touched.
"""

from __future__ import annotations

import numpy
import torch
from torch import Tensor

Seed = int | torch.Generator | None

DISTRIBUTIONS = ("rademacher", "normal")


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


def random_block(
    num_rows: int,
    num_columns: int,
    distribution: str,
    generator: torch.Generator,
    dtype: torch.dtype,
    device: torch.device | None,
) -> Tensor:
    """Draw a ``[num_rows, num_columns]`` block with i.i.d. entries, ``E[v vᵀ] = I`` per column.

    Args:
        num_rows: Number of rows.
        num_columns: Number of columns.
        distribution: ``'rademacher'`` (±1 with equal probability) or ``'normal'`` (standard normal).
        generator: Source of randomness. Drawn on its device, then moved to ``device``.
        dtype: Floating-point dtype of the block.
        device: Device of the block.

    Returns:
        The random block.

    Raises:
        ValueError: If ``distribution`` is unknown.
    """
    check_distribution(distribution)
    shape = (num_rows, num_columns)
    if distribution == "normal":
        block = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)
    else:
        bits = torch.randint(0, 2, shape, generator=generator, device=generator.device)
        block = bits.to(dtype).mul_(2).sub_(1)
    return block.to(device) if device is not None else block
