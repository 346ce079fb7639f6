"""Half-precision operators (float16, bfloat16): products in their precision, linear algebra in float32."""

import numpy
import pytest
import torch
from linalg_matrices import with_spectrum

from curvkit.linalg import (
    hutchinson_diag,
    hutchinson_squared_fro,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_approximate_spectrum,
    lanczos_eigsh,
    power_iteration,
    xdiag,
    xtrace,
)

ROUTINES = {
    "hutchinson_trace": lambda A: hutchinson_trace(A, 8, seed=0),
    "hutchpp_trace": lambda A: hutchpp_trace(A, 9, seed=0),
    "xtrace": lambda A: xtrace(A, 10, seed=0),
    "hutchinson_diag": lambda A: hutchinson_diag(A, 8, seed=0),
    "xdiag": lambda A: xdiag(A, 10, seed=0),
    "hutchinson_squared_fro": lambda A: hutchinson_squared_fro(A, 8, seed=0),
    "lanczos_eigsh": lambda A: lanczos_eigsh(A, k=3, tol=1e-4, seed=0)[0],
    "power_iteration": lambda A: power_iteration(A, tol=1e-4, seed=0)[0],
    "lanczos_approximate_spectrum": lambda A: lanczos_approximate_spectrum(A, ncv=12, num_points=32, seed=0)[
        1
    ],
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(ROUTINES))
def test_half_precision_operators_are_computed_in_float32(name, dtype):
    """PyTorch has no half-precision QR or eigh on the CPU: the routines would fail without the
    float32 view. Results equal those for the float32 copy of the matrix, up to the products'
    rounding (bfloat16 keeps 8 bits)."""
    matrix = with_spectrum(torch.cat([torch.tensor([8.0, 6.0, 5.0]), torch.linspace(0.1, 1.0, 37)])).to(dtype)
    result = ROUTINES[name](matrix)
    expected = ROUTINES[name](matrix.float())
    if isinstance(expected, numpy.ndarray):
        assert result.dtype == numpy.float32
        numpy.testing.assert_allclose(result, expected, rtol=0.05, atol=0.05 * abs(expected).max())
    else:
        assert result.dtype == torch.float32
        torch.testing.assert_close(result, expected, rtol=0.05, atol=0.05 * expected.abs().max().item())


def test_top_eigenvalues_of_a_bfloat16_network():
    """End to end: the GGN of a bfloat16 model multiplies in bfloat16; its top eigenvalues come out."""
    from torch import nn

    from curvkit import GGNLinearOperator

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(torch.bfloat16)
    data = [(torch.randn(8, 3, dtype=torch.bfloat16), torch.randint(0, 3, (8,)))]
    G = GGNLinearOperator(model, nn.CrossEntropyLoss(), list(model.parameters()), data)
    values, vectors = lanczos_eigsh(G, k=2, seed=0)
    assert values.dtype == vectors.dtype == torch.float32
    expected = torch.linalg.eigvalsh(G.to_dense().float())[-2:]
    torch.testing.assert_close(values, expected, rtol=0.02, atol=0.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "routine",
    [lambda A: lanczos_eigsh(A, k=3, seed=0)[0], lambda A: power_iteration(A, seed=0)[0]],
    ids=["lanczos_eigsh", "power_iteration"],
)
def test_default_tolerances_are_lifted_to_the_products_rounding(routine, dtype):
    """A residual below the products' rounding cannot be resolved: float32's default tolerances
    (1e-6, 1e-4) made both run out of products on half-precision operators."""
    matrix = with_spectrum(torch.cat([torch.tensor([8.0, 6.0, 5.0]), torch.linspace(-1.0, 1.0, 37)])).to(
        dtype
    )
    result = routine(matrix).double().reshape(-1).sort().values  # the largest ones, ascending
    expected = torch.linalg.eigvalsh(matrix.double())[-result.numel() :]
    torch.testing.assert_close(result, expected, rtol=8 * torch.finfo(dtype).eps, atol=0.0)


def test_lanczos_converges_on_a_bfloat16_hessian_at_its_default_tolerance():
    """The Hessian of a bfloat16 network: lanczos_eigsh ran out of products at float32's tol=1e-6."""
    from torch import nn

    from curvkit import HessianLinearOperator

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(torch.bfloat16)
    data = [(torch.randn(8, 6).to(torch.bfloat16), torch.randint(0, 3, (8,))) for _ in range(3)]
    H = HessianLinearOperator(model, nn.CrossEntropyLoss(), list(model.parameters()), data)
    values, _ = lanczos_eigsh(H, k=2, seed=0)
    expected = torch.linalg.eigvalsh(H.to_dense().double())[-2:]
    torch.testing.assert_close(values.double(), expected, rtol=4 * torch.finfo(torch.bfloat16).eps, atol=0.0)
