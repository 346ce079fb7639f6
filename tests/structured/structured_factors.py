"""Random factors and dense ground truth for the structured operators' tests."""

import torch


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def matrix(rows: int, columns: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(rows, columns, generator=generator(seed), dtype=torch.float64).to(dtype)


def psd(dim: int, seed: int, dtype=torch.float64, rank: int | None = None) -> torch.Tensor:
    """A random second-moment matrix ``B Bᵀ / r`` (singular for ``rank < dim``), symmetric exactly."""
    rank = dim + 2 if rank is None else rank
    B = matrix(dim, rank, seed)
    return ((B @ B.T) / rank).to(dtype)


def positive(dim: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """A positive diagonal, given by its entries."""
    return (torch.rand(dim, generator=generator(seed), dtype=torch.float64) + 0.5).to(dtype)


def dense(factor: torch.Tensor) -> torch.Tensor:
    return torch.diag(factor) if factor.ndim == 1 else factor


def joined_order(out_features: int, in_features: int) -> torch.Tensor:
    """``order[i]``: the position in ``vec([W b])`` of entry ``i`` of ``(vec W, b)``."""
    weight = [
        row * (in_features + 1) + column for row in range(out_features) for column in range(in_features)
    ]
    bias = [row * (in_features + 1) + in_features for row in range(out_features)]
    return torch.tensor(weight + bias)


def place_blocks(sizes: list[int], blocks: list[tuple[tuple[int, ...], torch.Tensor]]) -> torch.Tensor:
    """Dense ``P · BlockDiag · Pᵀ``: each block's matrix at the rows of its parameters (in its order)."""
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    dtype = blocks[0][1].dtype
    result = torch.zeros(offsets[-1], offsets[-1], dtype=dtype)
    for params, block in blocks:
        index = torch.cat([torch.arange(offsets[p], offsets[p + 1]) for p in params])
        result[index.unsqueeze(1), index.unsqueeze(0)] = block
    return result
