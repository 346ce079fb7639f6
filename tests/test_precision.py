"""Half-precision operators (float16, bfloat16): sums over the data and factorizations in float32.

Each reference is the float64 computation on the model's own rounded weights and data, so what
is left is the half precision's own rounding (2⁻⁸ for bfloat16, 2⁻¹¹ for float16), not a drift
that grows with the number of batches.
"""

import copy

import pytest
import torch
from torch import nn

from curvkit import (
    EFLinearOperator,
    EKFACLinearOperator,
    FisherMCLinearOperator,
    GGNLinearOperator,
    KFACLinearOperator,
    ggn_diagonal,
)
from curvkit.structured import KroneckerFactoredLinearOperator

HALF = [torch.bfloat16, torch.float16]
NUM_BATCHES = 256  # summed in half precision, KFAC drifted 25–30 eps over these, a GGN product 2.6–3.1


def _problem(dtype, convolution=False):
    torch.manual_seed(0)
    if convolution:  # 2 × 3 × 3 patches at 4 × 4 positions per sample
        model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4))
        input_shape = (2, 6, 6)
    else:
        model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))
        input_shape = (12,)
    model = model.to(dtype)
    generator = torch.Generator().manual_seed(1)
    data = [
        (
            torch.randn(8, *input_shape, generator=generator).to(dtype),
            torch.randint(0, 4, (8,), generator=generator),
        )
        for _ in range(NUM_BATCHES)
    ]
    exact = copy.deepcopy(model).double()
    exact_data = [(X.double(), y) for X, y in data]
    return (model, data), (exact, exact_data)


def _relative_error(actual, expected):
    return ((actual.double() - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("convolution, kfac_approx", [(False, "expand"), (True, "expand"), (True, "reduce")])
def test_kfac_factors_are_summed_in_float32(convolution, kfac_approx, dtype):
    (model, data), (exact, exact_data) = _problem(dtype, convolution)
    options = {"fisher_type": "type-2", "kfac_approx": kfac_approx}
    kfac = KFACLinearOperator(model, nn.CrossEntropyLoss(), list(model.parameters()), data, **options)
    reference = KFACLinearOperator(
        exact, nn.CrossEntropyLoss(), list(exact.parameters()), exact_data, **options
    )
    assert kfac.dtype == dtype
    assert _relative_error(kfac.to_dense(), reference.to_dense()) < torch.finfo(dtype).eps


@pytest.mark.parametrize("dtype", HALF)
def test_ggn_products_are_summed_in_float32(dtype):
    (model, data), (exact, exact_data) = _problem(dtype)
    ggn = GGNLinearOperator(
        model, nn.CrossEntropyLoss(), list(model.parameters()), data, check_deterministic=False
    )
    reference = GGNLinearOperator(exact, nn.CrossEntropyLoss(), list(exact.parameters()), exact_data)
    V = torch.randn(ggn.shape[1], 3, generator=torch.Generator().manual_seed(2)).to(dtype)
    product = ggn @ V
    assert product.dtype == dtype
    assert _relative_error(product, reference @ V.double()) < torch.finfo(dtype).eps


@pytest.mark.parametrize("dtype", HALF)
def test_kfac_inverse_factorizes_in_float32(dtype):
    """PyTorch has no half-precision Cholesky on the CPU: the factors' inverses are float32's."""
    (model, data), _ = _problem(dtype)
    params = list(model.parameters())
    kfac = KFACLinearOperator(model, nn.CrossEntropyLoss(), params, data, fisher_type="type-2")
    v = torch.randn(kfac.shape[1], generator=torch.Generator().manual_seed(3)).to(dtype)
    result = kfac.inverse(damping=1e-2) @ v
    assert result.dtype == dtype
    # the same (rounded) factors, inverted in float64
    exact = KroneckerFactoredLinearOperator(params, kfac.factored.blocks, dtype=torch.float64)
    expected = exact.inverse(damping=1e-2) @ v.double()
    assert _relative_error(result, expected) < torch.finfo(dtype).eps


def test_embedding_token_counts_pass_256_in_bfloat16():
    """bfloat16 holds integers exactly up to 256: a token seen 600 times is counted in float32."""
    model = nn.Sequential(nn.Embedding(3, 2), nn.Flatten(), nn.Linear(2, 3)).to(torch.bfloat16)
    tokens = torch.tensor([[0]] * 600 + [[1]] * 200)
    data = [(X, torch.zeros(len(X), dtype=torch.long)) for X in tokens.split(3)]
    embedding = model[0].weight
    kfac = KFACLinearOperator(model, nn.CrossEntropyLoss(), [embedding], data, fisher_type="forward-only")
    (block,) = kfac.factored.blocks
    frequencies = block.input_factor if block.input_factor.ndim == 1 else block.output_factor.diagonal()
    assert frequencies.tolist() == [0.75, 0.25, 0.0]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("operator", [EFLinearOperator, FisherMCLinearOperator])
def test_the_determinism_probe_allows_half_precision_rounding(operator, dtype, recwarn):
    """A block of columns and a vector alone differ by a rounding or two there: no wrong batching rule."""
    (model, data), _ = _problem(dtype)
    built = operator(model, nn.CrossEntropyLoss(), list(model.parameters()), data[:3])
    assert not [warning for warning in recwarn if "batching rule" in str(warning.message)]
    assert built.max_columns != 1


@pytest.mark.parametrize("dtype", HALF)
def test_ggn_diagonal_and_ekfac_are_summed_in_float32(dtype):
    (model, data), (exact, exact_data) = _problem(dtype)
    params, exact_params, loss_func = (
        list(model.parameters()),
        list(exact.parameters()),
        nn.CrossEntropyLoss(),
    )
    diagonal = torch.cat([d.flatten() for d in ggn_diagonal(model, loss_func, params, data)])
    expected = torch.cat([d.flatten() for d in ggn_diagonal(exact, loss_func, exact_params, exact_data)])
    assert diagonal.dtype == dtype
    assert _relative_error(diagonal, expected) < torch.finfo(dtype).eps
    ekfac = EKFACLinearOperator(model, loss_func, params, data, fisher_type="type-2").to_dense()
    reference = EKFACLinearOperator(
        exact, loss_func, exact_params, exact_data, fisher_type="type-2"
    ).to_dense()
    assert _relative_error(ekfac, reference) < 2 * torch.finfo(dtype).eps  # eigenvectors kept in `dtype`
