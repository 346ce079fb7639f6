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
