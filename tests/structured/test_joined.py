"""A weight and bias as one matrix ``[W b]``: the permutation between the two flattenings."""

import pytest
import torch
from contract import contract_on_cases
from structured_factors import joined_order, matrix, psd

from curvkit.linear_operator import DenseLinearOperator
from curvkit.structured import JoinedWeightBiasLinearOperator, KroneckerLinearOperator


def _case(out_features, in_features, seed, dtype=torch.float64, symmetric=True):
    size = out_features * (in_features + 1)
    inner = psd(size, seed, dtype) if symmetric else matrix(size, size, seed, dtype)
    order = joined_order(out_features, in_features)
    operator = JoinedWeightBiasLinearOperator(DenseLinearOperator(inner, symmetric=symmetric), out_features)
    return operator, inner.double()[order][:, order]


CASES = {
    "square": lambda: _case(3, 3, 0),
    "wide": lambda: _case(2, 5, 1),
    "one-output": lambda: _case(1, 4, 2),
    "nonsymmetric": lambda: _case(3, 2, 3, symmetric=False),
    "float32": lambda: _case(3, 4, 4, torch.float32),
}


TestContract = contract_on_cases(CASES)


def test_linear_layer_with_bias_is_kronecker_of_the_augmented_input():
    """``[W b]`` with inputs ``(x, 1)``: ``G [W b] Aᵀ`` splits into the weight's and the bias's part."""
    G, A = psd(3, 0), psd(5, 1)  # A: second moment of (x, 1), x ∈ ℝ⁴
    W, b = matrix(3, 4, 2), matrix(3, 1, 3).squeeze(1)
    operator = JoinedWeightBiasLinearOperator(KroneckerLinearOperator(G, A, psd=True), out_features=3)
    expected = G @ torch.cat([W, b.unsqueeze(1)], dim=1) @ A.T
    torch.testing.assert_close(
        operator @ torch.cat([W.flatten(), b]), torch.cat([expected[:, :4].flatten(), expected[:, 4]])
    )
    assert operator.is_psd
    torch.testing.assert_close(operator.trace(), G.trace() * A.trace())
    torch.testing.assert_close(operator.logdet(), 5 * torch.logdet(G) + 3 * torch.logdet(A))


@pytest.mark.parametrize(
    ("size", "out_features", "message"),
    [((6, 6), 4, "out_features"), ((6, 6), 6, r"in ≥ 1"), ((6, 4), 2, "square")],
)
def test_bad_input(size, out_features, message):
    with pytest.raises(ValueError, match=message):
        JoinedWeightBiasLinearOperator(DenseLinearOperator(torch.zeros(size)), out_features)
