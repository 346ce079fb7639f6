"""Closed forms of the identity and diagonal operators (their products: tests/test_linear_operator.py)."""

import math

import pytest
import torch

from curvkit import DiagonalLinearOperator, IdentityLinearOperator, structured


def test_public_import_paths():
    assert structured.IdentityLinearOperator is IdentityLinearOperator
    assert structured.DiagonalLinearOperator is DiagonalLinearOperator


@pytest.mark.parametrize(
    "diagonal",
    [torch.tensor([2.0, 3.0, 0.5], dtype=torch.float64), torch.tensor([2.0, -3.0]), torch.tensor([1.0, 0.0])],
    ids=["positive", "negative-float32", "singular"],
)
def test_diagonal_closed_forms(diagonal):
    operator, reference = DiagonalLinearOperator(diagonal), torch.diag(diagonal).double()
    torch.testing.assert_close(operator.trace().double(), reference.trace())
    torch.testing.assert_close(operator.det().double(), torch.linalg.det(reference))
    torch.testing.assert_close(operator.frobenius_norm().double(), torch.linalg.matrix_norm(reference))
    sign, logabsdet = torch.linalg.slogdet(reference)
    assert operator.slogdet()[0] == sign and operator.trace().dtype == diagonal.dtype
    expected_logdet = logabsdet.item() if sign > 0 else (-math.inf if sign == 0 else math.nan)
    torch.testing.assert_close(
        operator.logdet().double(), torch.tensor(expected_logdet, dtype=torch.float64), equal_nan=True
    )


def test_identity_closed_forms():
    identity = IdentityLinearOperator(4, dtype=torch.float64)
    assert identity.trace() == 4 and identity.logdet() == 0 and identity.det() == 1
    assert identity.frobenius_norm() == 2 and identity.trace().dtype == torch.float64
    assert IdentityLinearOperator(3).trace().dtype == torch.get_default_dtype()  # adapts: default dtype


def test_sums_and_multiples_of_diagonals_are_diagonal():
    first = DiagonalLinearOperator(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    second = DiagonalLinearOperator(torch.tensor([0.5, 4.0, 0.0], dtype=torch.float64))
    for combined, expected in [
        (first + second, [1.5, 2.0, 3.0]),
        (2 * first + second * 0.5, [2.25, -2.0, 6.0]),
        (first - second, [0.5, -6.0, 3.0]),
        (first / 2, [0.5, -1.0, 1.5]),
    ]:
        assert isinstance(combined, DiagonalLinearOperator)
        assert combined.diagonal.tolist() == expected
    assert (first + second).is_psd and not first.is_psd
    # another dtype, or a non-diagonal operator: the general sum (and its checks)
    with pytest.raises(ValueError, match="different dtypes"):
        first + DiagonalLinearOperator(torch.ones(3, dtype=torch.float32))
    assert not isinstance(first + IdentityLinearOperator(3), DiagonalLinearOperator)


def test_diagonal_inverse_is_closed_form_and_refuses_singular_ones():
    D = DiagonalLinearOperator(torch.tensor([1.0, 0.0, 4.0], dtype=torch.float64))
    inverse = D.inverse(damping=1.0)
    assert isinstance(inverse, DiagonalLinearOperator)
    torch.testing.assert_close(
        inverse.to_dense() @ (D.to_dense() + torch.eye(3, dtype=torch.float64)),
        torch.eye(3, dtype=torch.float64),
    )
    with pytest.raises(torch.linalg.LinAlgError, match="1 of its entries are 0"):
        D.inverse()
    with pytest.raises(ValueError, match="damping must be a finite non-negative number"):
        D.inverse(damping=-1.0)
