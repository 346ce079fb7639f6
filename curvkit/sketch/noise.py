"""Reproducible noise tensors of any shape (skerch's ``utils.gaussian_noise`` / ``rademacher_noise``).

Drawn by :class:`~curvkit.linalg._random.RandomColumns` as one long column from a generator on
the CPU, then moved: the same numbers on every device, from the caller's seed alone (never the
global RNG).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from curvkit._boundary import as_integer
from curvkit.linalg._random import RandomColumns, Seed, as_generator


def _shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return tuple(as_integer(size, "shape", minimum=0) for size in shape)


def _column(shape: tuple[int, ...], distribution: str, seed: Seed, dtype: torch.dtype, device) -> Tensor:
    numel = 1
    for size in shape:
        numel *= size
    columns = RandomColumns(numel, 1, distribution, as_generator(seed), dtype, device)
    return columns.block(0, 1).reshape(shape)


def gaussian_noise(
    shape: int | Sequence[int],
    mean: float = 0.0,
    std: float = 1.0,
    seed: Seed = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Normal noise with ``mean`` and ``std``, repeatable from ``seed`` on any device.

    Args:
        shape: Shape of the result.
        mean: Mean of the entries.
        std: Standard deviation of the entries.
        seed: ``int``, ``torch.Generator`` or ``None`` (a seed from NumPy's global state).
        dtype: Floating-point dtype of the result.
        device: Device of the result.

    Returns:
        The noise tensor.

    Example:
        >>> x = gaussian_noise((2, 3), seed=0, dtype=torch.float32)
        >>> x.shape, x.dtype, torch.equal(x, gaussian_noise((2, 3), seed=0, dtype=torch.float32))
        (torch.Size([2, 3]), torch.float32, True)
    """
    return _column(_shape(shape), "normal", seed, dtype, device).mul_(std).add_(mean)


def rademacher_noise(
    shape: int | Sequence[int], seed: Seed = None, device: torch.device | str = "cpu"
) -> Tensor:
    """Signs ``±1`` with equal probability, as an int64 tensor (cast by the caller), repeatable from ``seed``.

    Args:
        shape: Shape of the result.
        seed: ``int``, ``torch.Generator`` or ``None``.
        device: Device of the result.

    Returns:
        The noise tensor (int64).

    Example:
        >>> rademacher_noise(6, seed=0).abs().tolist()
        [1, 1, 1, 1, 1, 1]
    """
    return _column(_shape(shape), "rademacher", seed, torch.int64, device)
