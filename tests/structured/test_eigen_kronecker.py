"""``(Q_L ⊗ Q_R) diag(vec Λ) (Q_L ⊗ Q_R)ᵀ``: products, equality with KFAC's ``L ⊗ R``, closed forms."""

import pytest
import torch
from contract import contract_on_cases
from structured_factors import matrix, positive, psd

from curvkit.structured import EigenKroneckerLinearOperator


def _basis(dim, seed, dtype=torch.float64):
    return torch.linalg.qr(matrix(dim, dim, seed))[0].to(dtype).contiguous()


def _dense(eigenvalues, left, right):
    rows, columns = eigenvalues.shape
    left = torch.eye(rows, dtype=torch.float64) if left is None else left.double()
    right = torch.eye(columns, dtype=torch.float64) if right is None else right.double()
    basis = torch.kron(left, right)
    return basis @ torch.diag(eigenvalues.double().flatten()) @ basis.T


CASES = {
    "both-bases": lambda: (positive(3, 0).outer(positive(4, 1)), _basis(3, 2), _basis(4, 3)),
    "corrected": lambda: (
        torch.rand(3, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64),
        _basis(3, 5),
        _basis(2, 6),
    ),
    "identity-right": lambda: (positive(2, 7).outer(positive(5, 8)), _basis(2, 9), None),
    "identity-left": lambda: (positive(4, 10).outer(positive(2, 11)), None, _basis(2, 12)),
    "indefinite": lambda: (matrix(2, 3, 13), _basis(2, 14), _basis(3, 15)),
    "float32": lambda: (
        positive(3, 16, torch.float32).outer(positive(3, 17, torch.float32)),
        _basis(3, 18, torch.float32),
        _basis(3, 19, torch.float32),
    ),
}


@pytest.fixture(params=sorted(CASES), scope="module")
def case(request):
    eigenvalues, left, right = CASES[request.param]()
    return EigenKroneckerLinearOperator(eigenvalues, left, right), _dense(eigenvalues, left, right)


TestContract = contract_on_cases()


def test_kfac_eigenvalues_give_the_kronecker_product():
    G, A = psd(3, 0), psd(4, 1)
    (values_G, Q_G), (values_A, Q_A) = torch.linalg.eigh(G), torch.linalg.eigh(A)
    operator = EigenKroneckerLinearOperator(torch.outer(values_G, values_A), Q_G, Q_A)
    torch.testing.assert_close(operator.to_dense(), torch.kron(G, A), rtol=1e-12, atol=1e-12)
    assert operator.is_psd


def test_closed_forms_and_tags(case):
    operator, reference = case
    eigenvalues = operator.eigenvalues.double()
    tol = {"rtol": 1e-10, "atol": 1e-10} if operator.dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(operator.trace().double(), reference.trace(), **tol)
    torch.testing.assert_close(operator.frobenius_norm().double(), torch.linalg.matrix_norm(reference), **tol)
    sign, logabsdet = torch.linalg.slogdet(reference)
    torch.testing.assert_close(operator.slogdet()[1].double(), logabsdet, **tol)
    assert operator.slogdet()[0] == sign
    assert operator.is_psd == bool((eigenvalues >= 0).all()) and operator.is_symmetric


def test_with_eigenvalues_keeps_the_basis():
    operator = EigenKroneckerLinearOperator(positive(2, 0).outer(positive(3, 1)), _basis(2, 2), _basis(3, 3))
    shifted = operator.eigenvalues + 0.5
    inverse = operator.with_eigenvalues(1.0 / shifted)
    expected = torch.linalg.inv(operator.to_dense() + 0.5 * torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(inverse.to_dense(), expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"eigenvalues must have shape \[2, 3\]"):
        operator.with_eigenvalues(torch.ones(3, 2, dtype=torch.float64))


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ((torch.ones(6), None, None), ValueError, "eigenvalues must be 2-dimensional"),
        ((torch.ones(2, 3), torch.eye(3), None), ValueError, r"left_eigenvectors must have shape \[2, 2\]"),
        (
            (torch.ones(2, 3), None, torch.eye(3, dtype=torch.float64)),
            ValueError,
            "dtype and device of eigenvalues",
        ),
        ((torch.tensor([[1.0, float("inf")]]), None, None), ValueError, "non-finite"),
        ((torch.ones(2, 3, dtype=torch.int64), None, None), TypeError, "real floating-point"),
    ],
)
def test_bad_input(arguments, error, message):
    with pytest.raises(error, match=message):
        EigenKroneckerLinearOperator(*arguments)


@pytest.mark.parametrize("largest", [1e-17, 1.0, 1e30])
def test_eigenvalues_over_many_orders_of_magnitude(largest):
    """Float32 eigenvalues from ``largest`` down by 30 orders of magnitude (EKFAC's corrections of
    a few examples, mostly rounding): products as the float64 matrix gives them, to float32's
    precision of the largest; the eigenvalues themselves (and the closed forms) as given."""
    spread = torch.rand(6, 5, generator=torch.Generator().manual_seed(20), dtype=torch.float64)
    eigenvalues = (largest * 10.0 ** (-30 * spread)).float()
    left, right = _basis(6, 21, torch.float32), _basis(5, 22, torch.float32)
    operator = EigenKroneckerLinearOperator(eigenvalues, left, right)
    X = matrix(30, 3, 23)
    expected = _dense(eigenvalues, left, right) @ X
    result = operator @ X.float()
    torch.testing.assert_close(result.double(), expected, rtol=0, atol=1e-6 * float(expected.abs().max()))
    assert torch.equal(operator.eigenvalues, eigenvalues)
    torch.testing.assert_close(operator.trace().double(), eigenvalues.double().sum(), rtol=1e-6, atol=0)
