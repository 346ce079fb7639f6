"""The base class and its algebra, checked with the contract suite and property tests."""

import re

import numpy
import pytest
import torch
from contract import contract_on_cases
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.linalg import aslinearoperator, cg, eigsh, lsmr
from torch import nn
from torch.autograd import forward_ad

from curvkit import (
    CGInverseLinearOperator,
    DiagonalLinearOperator,
    GGNLinearOperator,
    IdentityLinearOperator,
    JacobianLinearOperator,
    LinearOperator,
    SubmatrixLinearOperator,
    as_linear_operator,
    reference,
)
from curvkit._layout import TensorListLayout
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


TestContract = contract_on_cases(CASES)


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
        (lambda: DenseLinearOperator(_matrix(2, 2)) / 0, ValueError, "by zero"),
        (lambda: DenseLinearOperator(_matrix(2, 2)) * "a", TypeError, None),
        (lambda: DenseLinearOperator(_matrix(2, 2)) * float("nan"), ValueError, "finite"),
        (lambda: DenseLinearOperator(torch.zeros(3)), ValueError, "2-dimensional"),
        (lambda: DiagonalLinearOperator(torch.zeros(2, 2)), ValueError, "1-dimensional"),
        (lambda: IdentityLinearOperator(-1), ValueError, "non-negative"),
        (lambda: as_linear_operator(3), TypeError, "Expected a linear operator"),
        (lambda: DenseLinearOperator(_matrix(2, 2)) @ "x", TypeError, None),
        (lambda: _Square(_matrix(2, 2)).to_dense(chunk_size=0), ValueError, "chunk_size"),
        (lambda: setattr(_Square(_matrix(2, 2)), "max_columns", 0), ValueError, "max_columns must be a"),
        (lambda: setattr(_Square(_matrix(2, 2)), "max_columns", True), ValueError, "max_columns"),
        (lambda: setattr(_Square(_matrix(2, 2)), "max_columns", 2.0), ValueError, "max_columns"),
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


# ----------------------------------------------------------------------------- autograd
def _tiny_ggn():
    """A float64 GGN of a 2-layer MLP with cross-entropy, and its dense reference."""
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64))
    data = [(torch.randn(6, 3, generator=generator, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2]))]
    loss_func, params = nn.CrossEntropyLoss(), list(model.parameters())
    dense = reference.ggn_matrix(model, loss_func, params, data)
    return GGNLinearOperator(model, loss_func, params, data), dense


def _damped_ggn():
    ggn, dense = _tiny_ggn()
    return ggn + 0.5 * IdentityLinearOperator(ggn.shape[0]), dense + 0.5 * torch.eye(ggn.shape[0]).double()


GRADIENT_CASES = {
    "dense": lambda: (DenseLinearOperator(_matrix(4, 5)), _matrix(4, 5)),
    "dense+identity": lambda: (
        DenseLinearOperator(_matrix(4, 4)) + IdentityLinearOperator(4),
        _matrix(4, 4) + torch.eye(4, dtype=torch.float64),
    ),
    "ggn": _tiny_ggn,
    "ggn+identity": _damped_ggn,
}


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("columns", [None, 2], ids=["vector", "matrix"])
def test_gradients_through_products_are_adjoint_products(case, side, columns):
    """∇ₓ f(A x) = Aᵀ ∇f and ∇ₓ f(x A) = ∇f Aᵀ for f(y) = ⟨w, y⟩ + ½‖y‖², without double counting."""
    operator, dense = GRADIENT_CASES[case]()
    in_dim = dense.shape[1] if side == "right" else dense.shape[0]
    shape = (in_dim,) if columns is None else (in_dim, columns) if side == "right" else (columns, in_dim)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = operator @ x.requires_grad_() if side == "right" else x.requires_grad_() @ operator
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (gradient,) = torch.autograd.grad((weights * y).sum() + 0.5 * y.square().sum(), x)
    x = x.detach()
    expected = dense.T @ (weights + dense @ x) if side == "right" else (weights + x @ dense) @ dense.T
    torch.testing.assert_close(gradient, expected)


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_products_are_twice_differentiable(case):
    """The Hessian of ½‖A x‖² is AᵀA: a double backward through the adjoint product."""
    operator, dense = GRADIENT_CASES[case]()
    x = torch.randn(dense.shape[1], dtype=torch.float64, requires_grad=True)
    v = torch.randn(dense.shape[1], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (gradient,) = torch.autograd.grad(0.5 * (operator @ x).square().sum(), x, create_graph=True)
    (hessian_v,) = torch.autograd.grad(gradient @ v, x)
    torch.testing.assert_close(hessian_v, dense.T @ (dense @ v))


def test_operators_are_constants_for_autograd():
    matrix = _matrix(3, 3).requires_grad_()
    operator = DenseLinearOperator(matrix)
    assert not (operator @ torch.ones(3, dtype=torch.float64)).requires_grad
    assert not operator.to_dense().requires_grad
    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    (operator @ x).sum().backward()
    assert matrix.grad is None and x.grad is not None


# ----------------------------------------------------------------------------- tensor lists
class _WithLayouts(_Square):
    def __init__(self, matrix, in_layout, out_layout=None):
        LinearOperator.__init__(
            self, tuple(matrix.shape), dtype=matrix.dtype, in_layout=in_layout, out_layout=out_layout
        )
        self.matrix = matrix


_LAYOUT = TensorListLayout([(2, 3), (4,)])
LIST_CASES = {
    "flat output": lambda: (_WithLayouts(_matrix(7, 10), _LAYOUT), _matrix(7, 10)),
    "dense @ layout": lambda: (
        DenseLinearOperator(_matrix(7, 10)) @ _WithLayouts(_matrix(10, 10, 1), _LAYOUT, _LAYOUT),
        _matrix(7, 10) @ _matrix(10, 10, 1),
    ),
}


@pytest.mark.parametrize("case", sorted(LIST_CASES))
@pytest.mark.parametrize("columns", [None, 2], ids=["vector", "matrix"])
def test_tensor_list_into_flat_output_answers_a_list_of_one_vector_or_matrix(case, columns):
    """An output space without structure is a list of one flat tensor, as in curvlinops."""
    operator, dense = LIST_CASES[case]()
    flat = _matrix(10, 1 if columns is None else columns, seed=4)
    as_list = _LAYOUT.unflatten_to_user_list(flat, is_vector=columns is None)
    expected = dense @ flat
    (result,) = operator @ as_list
    torch.testing.assert_close(result, expected[:, 0] if columns is None else expected)


# ----------------------------------------------------------------------------- shapes and scalars
@pytest.mark.parametrize("shape", [(2, 4), (4,), (5, 2), (2, 2, 5)])
@pytest.mark.parametrize("kind", ["tensor", "numpy"])
def test_left_product_error_reports_expected_and_actual_shapes(shape, kind):
    operator = DenseLinearOperator(_matrix(5, 3))
    x = torch.zeros(shape, dtype=torch.float64)
    message = re.escape("x must have shape [5] or [k, 5]") + ".*" + re.escape(f"got {list(shape)}.")
    with pytest.raises(ValueError, match=message):
        (x if kind == "tensor" else x.numpy()) @ operator


SCALARS = {
    "int": 2,
    "float": 2.0,
    "0-d tensor": torch.tensor(2.0),
    "0-d int tensor": torch.tensor(2),
    "0-d ndarray": numpy.array(2.0),
    "numpy float32": numpy.float32(2.0),
    "numpy int64": numpy.int64(2),
}
SCALINGS = {
    "c * A": (lambda A, c: c * A, 2.0),
    "A * c": (lambda A, c: A * c, 2.0),
    "A / c": (lambda A, c: A / c, 0.5),
}


@pytest.mark.parametrize("scalar", list(SCALARS.values()), ids=list(SCALARS))
@pytest.mark.parametrize("scaling", list(SCALINGS.values()), ids=list(SCALINGS))
def test_real_scalars_of_every_kind_scale(scalar, scaling):
    form, factor = scaling
    scaled = form(DenseLinearOperator(_matrix(3, 3)), scalar)
    torch.testing.assert_close(scaled.to_dense(), factor * _matrix(3, 3))


NON_SCALARS = {
    "[1] tensor": torch.tensor([2.0]),
    "[1, 1] tensor": torch.tensor([[2.0]]),
    "[1] ndarray": numpy.array([2.0]),
    "[2] ndarray": numpy.array([2.0, 3.0]),
}


@pytest.mark.parametrize("value", list(NON_SCALARS.values()), ids=list(NON_SCALARS))
@pytest.mark.parametrize("scaling", list(SCALINGS.values()), ids=list(SCALINGS))
def test_arrays_are_not_scalars(value, scaling):
    form, _ = scaling
    with pytest.raises(TypeError, match=r"scalar \(a number or a 0-d tensor or array\) only"):
        form(DenseLinearOperator(_matrix(3, 3)), value)


@pytest.mark.parametrize("zero", [0, 0.0, torch.tensor(0.0), numpy.array(0.0), numpy.float64(0.0)])
def test_division_by_zero_raises_value_error(zero):
    with pytest.raises(ValueError, match="by zero"):
        DenseLinearOperator(_matrix(3, 3)) / zero


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_products_with_zero_columns_are_empty(case):
    operator, dense = GRADIENT_CASES[case]()
    result = operator @ torch.zeros(dense.shape[1], 0, dtype=torch.float64)
    assert result.shape == (dense.shape[0], 0)
    assert (torch.zeros(0, dense.shape[0], dtype=torch.float64) @ operator).shape == (0, dense.shape[1])


FORWARD_CASES = {name: GRADIENT_CASES[name] for name in ("dense", "dense+identity")}


@pytest.mark.parametrize("case", sorted(FORWARD_CASES))
def test_forward_mode_derivatives_are_products_with_the_tangent(case):
    operator, dense = FORWARD_CASES[case]()
    x = torch.randn(dense.shape[1], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    tangent = torch.randn(dense.shape[1], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(torch.func.jvp(lambda x: operator @ x, (x,), (tangent,))[1], dense @ tangent)
    with forward_ad.dual_level():
        dual = operator @ forward_ad.make_dual(x, tangent)
        torch.testing.assert_close(forward_ad.unpack_dual(dual).tangent, dense @ tangent)
    torch.testing.assert_close(torch.func.jacfwd(lambda x: operator @ x)(x), dense)
    if dense.shape[0] == dense.shape[1]:  # forward over reverse, vmap-ed: the Hessian of xᵀ A x
        hessian = torch.func.hessian(lambda x: x @ (operator @ x))(x)
        torch.testing.assert_close(hessian, dense + dense.T)


def test_curvature_operators_refuse_forward_mode_loudly():
    """Never a silently zero tangent: PyTorch cannot nest the operator's own forward mode."""
    ggn, _ = _tiny_ggn()
    x, tangent = torch.ones(ggn.shape[0], dtype=torch.float64), torch.ones(ggn.shape[0], dtype=torch.float64)
    with pytest.raises(RuntimeError, match="Nested forward mode AD is not supported"):
        torch.func.jvp(lambda x: ggn @ x, (x,), (tangent,))


def test_to_dense_creates_nothing_on_the_default_device():
    """With another default device (``meta`` here, ``cuda`` on GPUs), the matrix is still the operator's."""
    operator = DiagonalLinearOperator(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    torch.set_default_device("meta")
    try:
        dense = operator.to_dense(chunk_size=2)
    finally:
        torch.set_default_device(None)
    torch.testing.assert_close(dense, torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)))


class _ColumnCounting(_Square):
    """Records the number of columns of every product it is asked for."""

    def __init__(self, matrix):
        super().__init__(matrix)
        self.widths = []

    def _matmat(self, X):
        self.widths.append(X.shape[1])
        return super()._matmat(X)

    def _rmatmat(self, X):
        self.widths.append(-X.shape[1])
        return super()._rmatmat(X)


def test_max_columns_splits_wide_products_into_blocks():
    matrix = _matrix(5, 4)
    operator = _ColumnCounting(matrix)
    assert operator.max_columns is None
    X = _matrix(4, 8, seed=1).requires_grad_()
    torch.testing.assert_close(operator @ X, matrix @ X)
    assert operator.widths == [8]
    operator.max_columns, operator.widths = 3, []
    result = operator @ X
    torch.testing.assert_close(result, matrix @ X)
    assert operator.widths == [3, 3, 2]
    operator.widths = []
    result.backward(torch.ones_like(result))  # the adjoint product is split too
    torch.testing.assert_close(X.grad, matrix.T @ torch.ones(5, 8, dtype=torch.float64))
    assert operator.widths == [-3, -3, -2]
    operator.widths = []
    W = _matrix(7, 5, seed=2)
    torch.testing.assert_close(W @ operator, W @ matrix)  # left products: 7 columns of Aᵀ Wᵀ
    assert operator.widths == [-3, -2, -2]  # balanced blocks: no lone column on another path
    operator.widths = []
    torch.testing.assert_close(operator.to_dense(), matrix)
    assert operator.widths == [2, 2]
    operator.widths = []
    operator.T.max_columns = 1  # A.T is a new view each time: the setting lives on A
    assert operator.max_columns == 1 and operator.T.max_columns == 1
    torch.testing.assert_close(operator.T @ W.T, matrix.T @ W.T)
    assert operator.widths == [-1] * 7
    operator.max_columns = numpy.int64(8)  # NumPy integers are integers
    assert operator.max_columns == 8 and type(operator.max_columns) is int
    operator.max_columns = None
    operator.widths = []
    operator @ X
    assert operator.widths == [8]


class _StorageRecording(_Square):
    def _matmat(self, X):
        self.storages.append((X.untyped_storage().data_ptr(), X.stride(0)))
        return super()._matmat(X)


@pytest.mark.parametrize("layout", ["column-major", "row-major"])
def test_blocks_of_columns_are_views_of_one_buffer_not_copies(layout):
    """Splitting wide inputs costs one transposition at most, not a strided copy per block."""
    matrix = _matrix(6, 6)
    operator = _StorageRecording(matrix)
    operator.storages, operator.max_columns = [], 2
    X = _matrix(7, 6, seed=1).T if layout == "column-major" else _matrix(6, 7, seed=1)
    torch.testing.assert_close(operator @ X, matrix @ X)
    assert len(operator.storages) == 4
    assert len({pointer for pointer, _ in operator.storages}) == 1  # one buffer for all blocks
    assert all(stride == 1 for _, stride in operator.storages)  # the columns are its rows
    if layout == "column-major":
        assert operator.storages[0][0] == X.untyped_storage().data_ptr()  # not even copied once


class _Squeezing(_Square):
    """A subclass with a common bug: it drops the column axis of single columns."""

    def _matmat(self, X):
        return (self.matrix @ X).squeeze()


@pytest.mark.parametrize("max_columns, num_columns", [(None, 1), (1, 3)])
def test_a_block_of_the_wrong_shape_is_named(max_columns, num_columns):
    operator = _Squeezing(_matrix(5, 5))
    operator.max_columns = max_columns
    with pytest.raises(RuntimeError, match=r"_Squeezing returned a result of shape \[5\], expected \[5, 1\]"):
        operator @ _matrix(5, num_columns)


def _jacobian_transpose():
    model = nn.Linear(3, 2).double()
    data = [(_matrix(4, 3), None)]
    J = JacobianLinearOperator(model, list(model.parameters()), data)
    return J.T, J.to_dense().T


UNSTRUCTURED = {  # operators without a parameter layout on one side at least
    "submatrix": lambda: (
        SubmatrixLinearOperator(_matrix(6, 6), [0, 2, 3], [1, 4]),
        _matrix(6, 6)[[0, 2, 3]][:, [1, 4]],
    ),
    "CG inverse": lambda: (CGInverseLinearOperator(_symmetric(5)), torch.linalg.inv(_symmetric(5))),
    "sum": lambda: (
        DenseLinearOperator(_matrix(4, 4)) + DenseLinearOperator(_matrix(4, 4, 1)),
        _matrix(4, 4) + _matrix(4, 4, 1),
    ),
    "Jacobian transpose": _jacobian_transpose,
}


@pytest.mark.parametrize("case", sorted(UNSTRUCTURED))
def test_every_operator_takes_a_tensor_list_shaped_like_its_input_space(case):
    """curvlinops accepts a tensor list on every operator: a space without structure is one flat
    tensor; Jᵀ takes the model's output shape [N, C] and answers with parameter shapes."""
    operator, dense = UNSTRUCTURED[case]()
    in_layout = operator.in_layout or TensorListLayout([(operator.shape[1],)])
    out_layout = operator.out_layout or TensorListLayout([(operator.shape[0],)])
    x = _matrix(operator.shape[1], 2, seed=3)
    for columns in (x[:, :1], x):
        is_vector = columns.shape[1] == 1
        result = operator @ in_layout.unflatten_to_user_list(columns, is_vector=is_vector)
        flat, _ = out_layout.flatten_user_list(result, name="result")
        torch.testing.assert_close(flat, dense @ columns, rtol=1e-6, atol=1e-8)
