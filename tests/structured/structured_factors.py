"""Random factors and dense ground truth for the structured operators' tests."""

import math

import torch

from curvkit.structured import KroneckerBlock


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def matrix(rows: int, columns: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(rows, columns, generator=generator(seed), dtype=torch.float64).to(dtype)


def psd(dim: int, seed: int, dtype=torch.float64, rank: int | None = None) -> torch.Tensor:
    """A random second-moment matrix ``B Bᵀ / r`` (singular for ``rank < dim``), symmetric exactly."""
    rank = dim + 2 if rank is None else rank
    B = matrix(dim, rank, seed)
    product = (B @ B.T) / rank  # symmetric only to rounding with some BLAS builds
    return ((product + product.T) / 2).to(dtype)


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


# ------------------------------------------------------------------------------------ KFAC problems
# A convolution's weight [4, 2, 2, 2] joined with its bias [4] (input factor 2·2·2 + 1 = 9), a linear
# layer [3, 5] with its bias [3] apart, an embedding [6, 3] (input-major, diagonal input factor), the
# parameters listed in a shuffled order. Sizes 3, 18, 4, 15, 32.
PARAM_SHAPES = [(3,), (6, 3), (4,), (3, 5), (4, 2, 2, 2)]
LINEAR_BIAS, EMBEDDING, CONV_BIAS, LINEAR_WEIGHT, CONV_WEIGHT = range(5)


def kfac_factors(dtype=torch.float64, seed=0) -> dict[str, torch.Tensor]:
    return {
        "conv_G": psd(4, seed, dtype),
        "conv_A": psd(9, seed + 1, dtype),
        "linear_G": psd(3, seed + 2, dtype),
        "linear_A": psd(5, seed + 3, dtype),
        "embedding_A": positive(6, seed + 4, dtype),
        "embedding_G": psd(3, seed + 5, dtype),
    }


def kfac_blocks(factors: dict[str, torch.Tensor]) -> list:
    return [
        KroneckerBlock((CONV_WEIGHT, CONV_BIAS), factors["conv_G"], factors["conv_A"]),
        KroneckerBlock((LINEAR_WEIGHT,), factors["linear_G"], factors["linear_A"]),
        KroneckerBlock((LINEAR_BIAS,), factors["linear_G"]),
        KroneckerBlock((EMBEDDING,), factors["embedding_G"], factors["embedding_A"], input_major=True),
    ]


def kfac_dense(blocks: list[tuple[tuple[int, ...], torch.Tensor]]) -> torch.Tensor:
    """Dense operator from per-block matrices on the blocks' matrices (``vec([W b])`` for joined ones)."""
    sizes = [math.prod(shape) for shape in PARAM_SHAPES]
    placed = []
    for params, block in blocks:
        if len(params) == 2:  # joined: matrix on vec([W b]) → on (vec W, b)
            out_features = PARAM_SHAPES[params[1]][0]
            order = joined_order(out_features, sizes[params[0]] // out_features)
            block = block[order][:, order]
        placed.append((params, block))
    return place_blocks(sizes, placed)


def kfac_reference(
    factors: dict[str, torch.Tensor], transform=lambda factor, role, pair: factor
) -> torch.Tensor:
    """Dense KFAC, each factor first passed through ``transform(factor, role, (G, A))``.

    ``role`` is 'G', 'A' or 'bias' (the output factor of a bias alone); ``(G, A)`` the block's pair.
    """
    f = {name: dense(value).double() for name, value in factors.items()}

    def kron(g, a, input_major=False):
        pair = (f[g], f[a])
        G, A = transform(f[g], "G", pair), transform(f[a], "A", pair)
        return torch.kron(A, G) if input_major else torch.kron(G, A)

    return kfac_dense(
        [
            ((CONV_WEIGHT, CONV_BIAS), kron("conv_G", "conv_A")),
            ((LINEAR_WEIGHT,), kron("linear_G", "linear_A")),
            ((LINEAR_BIAS,), transform(f["linear_G"], "bias", (f["linear_G"], None))),
            ((EMBEDDING,), kron("embedding_G", "embedding_A", input_major=True)),
        ]
    )


def kfac_params(dtype=torch.float64) -> list[torch.Tensor]:
    return [torch.zeros(shape, dtype=dtype) for shape in PARAM_SHAPES]
