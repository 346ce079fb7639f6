"""The base class and its algebra, checked with the contract suite and property tests."""

import numpy
import pytest
import torch
from contract import LinearOperatorContract
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.linalg import aslinearoperator, cg, eigsh, lsmr

from curvkit import DiagonalLinearOperator, IdentityLinearOperator, LinearOperator, as_linear_operator
from curvkit.linear_operator import DenseLinearOperator


def _matrix(rows, columns, seed=0, dtype=torch.float64):
    return torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _symmetric(dim, seed=0, dtype=torch.float64):
    matrix = _matrix(dim, dim, seed, dtype)
    return matrix @ matrix.T + torch.eye(dim, dtype=dtype)


class _Square(LinearOperator):
    """A minimal subclass that implements only ``_matmat`` and ``_rmatmat``."""

    def __init__(self, matrix):
        super().__init__(tuple(matrix.shape), dtype=matrix.dtype, device=matrix.device)
        self.matrix = matrix

    def _matmat(self, X):
        return self.matrix @ X

    def _rmatmat(self, X):
        return self.matrix.T @ X


CASES = {
    "dense-rectangular": lambda: (DenseLinearOperator(_matrix(5, 3)), _matrix(5, 3)),
    "dense-float32": lambda: (
        DenseLinearOperator(_matrix(4, 4, dtype=torch.float32)),
        _matrix(4, 4, dtype=torch.float32),
    ),
    "subclass": lambda: (_Square(_matrix(4, 4, 1)), _matrix(4, 4, 1)),
    "numpy": lambda: (as_linear_operator(_matrix(3, 6, 2).numpy()), _matrix(3, 6, 2)),
    "scipy": lambda: (as_linear_operator(aslinearoperator(_matrix(4, 2, 3).numpy())), _matrix(4, 2, 3)),
    "sum": lambda: (
        DenseLinearOperator(_matrix(4, 5)) + DenseLinearOperator(_matrix(4, 5, 1)),
        _matrix(4, 5) + _matrix(4, 5, 1),
    ),
    "scaled": lambda: (3.0 * DenseLinearOperator(_matrix(4, 5)), 3.0 * _matrix(4, 5)),
    "product": lambda: (
        DenseLinearOperator(_matrix(4, 5)) @ DenseLinearOperator(_matrix(5, 3, 1)),
        _matrix(4, 5) @ _matrix(5, 3, 1),
    ),
    "transposed": lambda: (DenseLinearOperator(_matrix(4, 5)).T, _matrix(4, 5).T),
    "damped": lambda: (
        DenseLinearOperator(_symmetric(4), symmetric=True) + 0.5 * IdentityLinearOperator(4),
        _symmetric(4) + 0.5 * torch.eye(4, dtype=torch.float64),
    ),
    "identity": lambda: (IdentityLinearOperator(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64)),
    "diagonal": lambda: (
        DiagonalLinearOperator(torch.arange(1.0, 5.0, dtype=torch.float64)),
        torch.diag(torch.arange(1.0, 5.0, dtype=torch.float64)),
    ),
}


@pytest.fixture(params=sorted(CASES), scope="module")
def case(request):
    return CASES[request.param]()


class TestContract(LinearOperatorContract):
    @pytest.fixture
    def operator(self, case):
        return case[0]

    @pytest.fixture
    def dense(self, case):
        return case[1]


def test_structural_tags_travel_by_rule():
    spd = DenseLinearOperator(_symmetric(3), psd=True)
    general = DenseLinearOperator(_matrix(3, 3))
    assert spd.is_symmetric and spd.is_psd
    assert (spd + 2.0 * IdentityLinearOperator(3)).is_psd
    assert not (-spd).is_psd and (-spd).is_symmetric
    assert not (spd + general).is_symmetric
    assert spd.T is spd
    assert not general.T.is_symmetric and general.T.T is general


def test_identity_adapts_to_partner_dtype_and_device():
    damped = DenseLinearOperator(_matrix(3, 3, dtype=torch.float32)) + IdentityLinearOperator(3)
    assert damped.dtype == torch.float32
    assert damped.device == torch.device("cpu")


@pytest.mark.parametrize(
    "build, error, match",
    [
        (
            lambda: DenseLinearOperator(_matrix(3, 3)) + DenseLinearOperator(_matrix(3, 4)),
            ValueError,
            "different shapes",
        ),
        (
            lambda: DenseLinearOperator(_matrix(3, 3)) @ DenseLinearOperator(_matrix(4, 4)),
            ValueError,
            "Cannot multiply",
        ),
        (
            lambda: (
                DenseLinearOperator(_matrix(2, 2)) + DenseLinearOperator(_matrix(2, 2, dtype=torch.float32))
            ),
            ValueError,
            "different dtypes",
        ),
        (lambda: DenseLinearOperator(_matrix(2, 2)) / 0, ZeroDivisionError, "by zero"),
        (lambda: DenseLinearOperator(_matrix(2, 2)) * "a", TypeError, None),
        (lambda: DenseLinearOperator(_matrix(2, 2)) * float("nan"), ValueError, "finite"),
        (lambda: DenseLinearOperator(torch.zeros(3)), ValueError, "2-dimensional"),
        (lambda: DiagonalLinearOperator(torch.zeros(2, 2)), ValueError, "1-dimensional"),
        (lambda: IdentityLinearOperator(-1), ValueError, "non-negative"),
        (lambda: as_linear_operator(3), TypeError, "Expected a linear operator"),
        (lambda: DenseLinearOperator(_matrix(2, 2)) @ "x", TypeError, None),
        (lambda: _Square(_matrix(2, 2)).to_dense(chunk_size=0), ValueError, "chunk_size"),
    ],
)
def test_bad_input_raises_clear_errors(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_scipy_solvers_work_on_the_export():
    matrix = _symmetric(8)
    operator = DenseLinearOperator(matrix, symmetric=True).to_scipy()
    eigenvalues = eigsh(operator, k=3, which="LA", return_eigenvectors=False)
    numpy.testing.assert_allclose(
        numpy.sort(eigenvalues), torch.linalg.eigvalsh(matrix)[-3:].numpy(), rtol=1e-8
    )
    rhs = numpy.ones(8)
    solution, info = cg(operator, rhs, rtol=1e-12)
    assert info == 0
    numpy.testing.assert_allclose(
        solution, torch.linalg.solve(matrix, torch.ones(8, dtype=torch.float64)), rtol=1e-6
    )
    rectangular = DenseLinearOperator(_matrix(6, 4)).to_scipy()
    least_squares = lsmr(rectangular, numpy.ones(6), atol=1e-12, btol=1e-12)[0]
    expected = torch.linalg.lstsq(_matrix(6, 4), torch.ones(6, 1, dtype=torch.float64)).solution.squeeze(1)
    numpy.testing.assert_allclose(least_squares, expected.numpy(), rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    inner=st.integers(1, 6),
    columns=st.integers(1, 4),
    scalars=st.tuples(st.floats(-3, 3), st.floats(-3, 3)),
    seed=st.integers(0, 1000),
)
def test_lazy_algebra_matches_dense_algebra(rows, inner, columns, scalars, seed):
    A, B = _matrix(rows, inner, seed), _matrix(rows, inner, seed + 1)
    C = _matrix(inner, columns, seed + 2)
    a, b = scalars
    lazy = (a * DenseLinearOperator(A) - b * DenseLinearOperator(B)) @ DenseLinearOperator(C)
    torch.testing.assert_close(lazy.to_dense(), (a * A - b * B) @ C)
    torch.testing.assert_close(lazy.T.to_dense(), ((a * A - b * B) @ C).T)
    x = _matrix(columns, 2, seed + 3)
    torch.testing.assert_close(lazy @ x, (a * A - b * B) @ C @ x)
