"""``L ⊗ R`` on row-major flattened matrices: products, order, closed forms, bad input."""

import math

import pytest
import torch
from contract import contract_on_cases
from hypothesis import given, settings
from hypothesis import strategies as st
from structured_factors import dense, matrix, positive, psd

from curvkit.structured import KroneckerLinearOperator

CASES = {
    "dense-dense": lambda: (psd(3, 0), psd(4, 1), True),
    "dense-diagonal": lambda: (psd(3, 2), positive(5, 3), True),
    "diagonal-dense": lambda: (positive(2, 4), psd(3, 5), True),
    "diagonal-diagonal": lambda: (positive(3, 6), positive(2, 7), True),
    "nonsymmetric": lambda: (matrix(3, 3, 8), matrix(2, 2, 9), False),
    "bias-like": lambda: (psd(4, 10), torch.ones(1, dtype=torch.float64), True),
    "float32": lambda: (psd(3, 11, torch.float32), psd(4, 12, torch.float32), True),
}


@pytest.fixture(params=sorted(CASES), scope="module")
def case(request):
    left, right, is_psd = CASES[request.param]()
    dense_matrix = torch.kron(dense(left).double(), dense(right).double())
    return KroneckerLinearOperator(left, right, psd=is_psd), dense_matrix


TestContract = contract_on_cases()


def test_tags(case):
    operator, dense_matrix = case
    assert operator.is_symmetric == bool(torch.equal(dense_matrix, dense_matrix.T))


def test_order_against_row_major_flattening():
    """``(G ⊗ A) vec(W) = vec(G W Aᵀ)`` for curvkit's (PyTorch's) row-major flattening; papers'
    column-stacking gives ``A ⊗ G`` for the same map."""
    G, A, W = matrix(3, 3, 0), matrix(4, 4, 1), matrix(3, 4, 2)
    expected = G @ W @ A.T
    operator = KroneckerLinearOperator(G, A)
    torch.testing.assert_close(operator @ W.flatten(), expected.flatten(), rtol=1e-12, atol=1e-12)
    column_major = torch.kron(A, G) @ W.T.flatten()  # vec_col(W) = W.T.flatten()
    torch.testing.assert_close(column_major, expected.T.flatten(), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(torch.kron(A, G), operator.to_dense())


def test_convolution_weight_flattens_its_trailing_dimensions():
    """A weight ``[out, in, kh, kw]`` is the matrix ``[out, in·kh·kw]``: ``A`` runs over (channel, kernel)."""
    G, A = matrix(2, 2, 0), matrix(3 * 2 * 2, 3 * 2 * 2, 1)
    W = matrix(2, 12, 2).reshape(2, 3, 2, 2)
    expected = torch.einsum("op,pckl,dckl->od", G, W, A.reshape(12, 3, 2, 2))
    operator = KroneckerLinearOperator(G, A)
    torch.testing.assert_close(operator @ W.flatten(), expected.flatten(), rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    columns=st.integers(1, 6),
    num_columns=st.integers(1, 3),
    left_diagonal=st.booleans(),
    right_diagonal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_products_match_torch_kron(rows, columns, num_columns, left_diagonal, right_diagonal, seed):
    left = matrix(rows, 1, seed).squeeze(1) if left_diagonal else matrix(rows, rows, seed)
    right = matrix(columns, 1, seed + 1).squeeze(1) if right_diagonal else matrix(columns, columns, seed + 1)
    X = matrix(rows * columns, num_columns, seed + 2)
    operator, reference = KroneckerLinearOperator(left, right), torch.kron(dense(left), dense(right))
    torch.testing.assert_close(operator @ X, reference @ X, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(operator.T @ X, reference.T @ X, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("num_columns", [1, 5, 8])  # stacks of 3, 15 and 24 rows: R itself, then Rᵀ
def test_products_with_symmetric_factors_short_and_long(num_columns):
    left, right = psd(3, 0), psd(4, 1)
    X = matrix(12, num_columns, 2)
    operator, reference = KroneckerLinearOperator(left, right, psd=True), torch.kron(left, right)
    torch.testing.assert_close(operator @ X, reference @ X, rtol=1e-12, atol=1e-12)


CLOSED_FORM_CASES = {
    "psd": lambda: (psd(3, 0), psd(4, 1), True),
    "psd-diagonal": lambda: (psd(3, 2), positive(4, 3), True),
    "negative-determinant": lambda: (matrix(3, 3, 4), matrix(2, 2, 5), False),
    "float32": lambda: (psd(3, 6, torch.float32), psd(5, 7, torch.float32), True),
}


@pytest.mark.parametrize("name", sorted(CLOSED_FORM_CASES))
def test_closed_forms_match_torch_linalg(name):
    left, right, is_psd = CLOSED_FORM_CASES[name]()
    operator = KroneckerLinearOperator(left, right, psd=is_psd)
    reference = operator.to_dense().double()
    tol = {"rtol": 1e-10, "atol": 1e-10} if left.dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for value in (operator.trace(), operator.logdet(), operator.det(), operator.frobenius_norm()):
        assert value.dtype == left.dtype and value.shape == ()
    sign, logabsdet = torch.linalg.slogdet(reference)
    torch.testing.assert_close(operator.trace().double(), reference.trace(), **tol)
    torch.testing.assert_close(operator.det().double(), torch.linalg.det(reference), **tol)
    torch.testing.assert_close(operator.slogdet()[0].double(), sign, **tol)
    torch.testing.assert_close(operator.slogdet()[1].double(), logabsdet, **tol)
    torch.testing.assert_close(operator.frobenius_norm().double(), torch.linalg.matrix_norm(reference), **tol)
    if sign > 0:
        torch.testing.assert_close(operator.logdet().double(), logabsdet, **tol)
    else:
        assert operator.logdet().isnan()  # torch.logdet's convention for det < 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_logdet_does_not_overflow(dtype):
    """``log det`` of a 600 × 600 Kronecker product beyond float64's range: finite, equal to torch's."""
    left, right = 100.0 * psd(20, 0, dtype), psd(30, 1, dtype)
    operator = KroneckerLinearOperator(left, right, psd=True)
    _, reference = torch.linalg.slogdet(torch.kron(left.double(), right.double()))
    assert reference > 800  # e^800 overflows float64
    torch.testing.assert_close(
        operator.logdet().double(), reference, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0
    )
    assert operator.det().isinf()


def test_singular_psd_factor_gives_minus_infinity():
    """A rank-deficient PSD factor has eigenvalues of either sign around zero in floating point;
    the clamped eigenvalues give ``-inf``, where an LU factorization may give ``nan``."""
    operator = KroneckerLinearOperator(psd(5, 0, rank=2), psd(3, 1), psd=True)
    assert operator.logdet() == -math.inf and operator.det() == 0
    assert operator.slogdet()[0] == 0


@pytest.mark.parametrize(
    ("left", "right", "kwargs", "error", "message"),
    [
        (
            torch.zeros(2, 3),
            torch.eye(2),
            {},
            ValueError,
            r"left must be a square matrix \[n, n\] or a diagonal",
        ),
        (torch.eye(2), torch.zeros(2, 2, 2), {}, ValueError, r"right must be a square matrix"),
        (torch.eye(2), torch.eye(2, dtype=torch.float64), {}, ValueError, "same dtype and device"),
        ([[1.0]], torch.eye(2), {}, TypeError, "left must be a torch.Tensor"),
        (torch.eye(2, dtype=torch.complex64), torch.eye(2), {}, TypeError, "complex"),
        (torch.eye(2, dtype=torch.int64), torch.eye(2), {}, TypeError, "floating-point"),
        (torch.tensor([1.0, math.nan]), torch.eye(2), {}, ValueError, "non-finite"),
        (torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.eye(2), {"psd": True}, ValueError, "not symmetric"),
    ],
)
def test_bad_input(left, right, kwargs, error, message):
    with pytest.raises(error, match=message):
        KroneckerLinearOperator(left, right, **kwargs)
