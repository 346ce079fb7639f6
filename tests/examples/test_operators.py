"""The small operators of ``curvkit.examples`` (curvlinops.examples' names and signatures)."""

from __future__ import annotations

import pytest
import torch
from contract import contract_on_cases
from torch import nn

from curvkit import GGNLinearOperator
from curvkit.examples import IdentityLinearOperator, OuterProductLinearOperator, TensorLinearOperator

F64 = torch.float64


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _outer_product():
    coefficients, vectors = _randn(3), _randn(6, 3, seed=1)
    return OuterProductLinearOperator(coefficients, vectors), vectors @ torch.diag(coefficients) @ vectors.T


CASES = {
    "tensor": lambda: (TensorLinearOperator(_randn(4, 5)), _randn(4, 5)),
    "tensor-symmetric": lambda: (
        TensorLinearOperator(_randn(4, 4) + _randn(4, 4).T),
        _randn(4, 4) + _randn(4, 4).T,
    ),
    "outer-product": _outer_product,
    "identity": lambda: (IdentityLinearOperator([(2, 3), (4,)], "cpu", F64), torch.eye(10, dtype=F64)),
}

TestContract = contract_on_cases(CASES)


def test_a_tensor_operator_is_symmetric_where_its_matrix_is():
    assert TensorLinearOperator(_randn(3, 3) + _randn(3, 3).T).is_symmetric
    assert not TensorLinearOperator(_randn(3, 3)).is_symmetric


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: TensorLinearOperator(_randn(3)), r"A must be a 2-dimensional tensor, got shape \[3\]"),
        (lambda: OuterProductLinearOperator(_randn(2), _randn(5, 3)), r"A must be \[D, K\] and c \[K\]"),
    ],
)
def test_bad_shapes_are_named(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_the_identity_on_parameter_shapes_damps_a_curvature_operator_on_tensor_lists():
    """curvlinops' inverses example: ``GGN + δ I(shapes, device, dtype)`` multiplies parameter lists."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2)).double()
    params = list(model.parameters())
    data = [(torch.randn(5, 3, dtype=F64), torch.randn(5, 2, dtype=F64))]
    ggn = GGNLinearOperator(model, nn.MSELoss(), params, data)
    identity = IdentityLinearOperator([p.shape for p in params], ggn.device, F64)
    damped = ggn + 1e-2 * identity
    vector = [torch.randn_like(p) for p in params]
    product = damped @ vector
    flat = torch.cat([v.flatten() for v in vector])
    expected = ggn @ flat + 1e-2 * flat
    assert [tuple(p.shape) for p in product] == [tuple(p.shape) for p in params]
    torch.testing.assert_close(torch.cat([p.flatten() for p in product]), expected)
    assert all(torch.equal(a, b) for a, b in zip(identity @ vector, vector))
