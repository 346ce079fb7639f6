"""One contract test suite for every linear operator.

A test module subclasses :class:`LinearOperatorContract` and provides two fixtures,
``operator`` and ``dense`` (the matrix it must equal, a float64 tensor if possible); it then
inherits every check of products with vectors, matrices, NumPy arrays and tensor lists,
transposes, algebra and SciPy export. A module whose cases build ``(operator, dense)`` pairs
writes ``TestContract = contract_on_cases(CASES)`` instead (:func:`contract_on_cases`).
"""

import warnings

import numpy
import pytest
import torch
from scipy.sparse.linalg import LinearOperator as ScipyLinearOperator

from curvkit._layout import TensorListLayout
from curvkit.linear_operator import LinearOperator


def tolerances(operator: LinearOperator) -> dict:
    if operator.dtype in (None, torch.float64):
        return {"rtol": 1e-9, "atol": 1e-10}
    return {"rtol": 1e-4, "atol": 1e-5}


def assert_close(actual, expected, operator: LinearOperator) -> None:
    actual = torch.as_tensor(actual).to(torch.float64).cpu()
    expected = torch.as_tensor(expected).to(torch.float64).cpu()
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    tol = tolerances(operator)
    torch.testing.assert_close(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale)


def random_input(operator: LinearOperator, *shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    dtype = operator.dtype or torch.float64
    return torch.randn(*shape, generator=generator, dtype=dtype).to(operator.device or "cpu")


class LinearOperatorContract:
    """Checks every operator must pass. Subclasses provide ``operator`` and ``dense`` fixtures."""

    def test_shape_dtype_device(self, operator, dense):
        assert operator.shape == tuple(dense.shape)
        if operator.dtype is not None:
            assert operator.dtype == dense.dtype or dense.dtype == torch.float64

    def test_to_dense(self, operator, dense):
        assert_close(operator.to_dense(), dense, operator)
        assert_close(operator.to_dense(chunk_size=3), dense, operator)

    def test_matvec_and_matmat(self, operator, dense):
        vector = random_input(operator, operator.shape[1])
        matrix = random_input(operator, operator.shape[1], 3, seed=1)
        result = operator @ vector
        assert isinstance(result, torch.Tensor) and result.shape == (operator.shape[0],)
        assert_close(result, dense @ vector.to(dense), operator)
        assert_close(operator @ matrix, dense @ matrix.to(dense), operator)

    def test_linearity(self, operator, dense):
        x, y = (
            random_input(operator, operator.shape[1], seed=2),
            random_input(operator, operator.shape[1], seed=3),
        )
        assert_close(operator @ (2.0 * x - 3.0 * y), 2.0 * (operator @ x) - 3.0 * (operator @ y), operator)

    def test_numpy_in_numpy_out(self, operator, dense):
        x = random_input(operator, operator.shape[1], 2).cpu().numpy()
        result = operator @ x
        assert isinstance(result, numpy.ndarray) and result.shape == (operator.shape[0], 2)
        assert_close(result, dense.cpu() @ torch.from_numpy(x).to(dense.dtype), operator)

    def test_precision_conversion_warns_once(self, operator, dense):
        if operator.dtype == torch.float32:
            with pytest.warns(UserWarning, match="float64.*float32") as record:
                operator @ numpy.ones(operator.shape[1])
            assert len(record) == 1
        else:  # matching precision converts nothing and says nothing
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                operator @ numpy.ones(operator.shape[1])

    def test_left_products_and_transpose(self, operator, dense):
        x = random_input(operator, 2, operator.shape[0], seed=4)
        assert_close(x @ operator, x.to(dense) @ dense, operator)
        assert_close(x[0].cpu().numpy() @ operator, x[0].to(dense).cpu() @ dense.cpu(), operator)
        assert operator.T.shape == operator.shape[::-1]
        assert_close(operator.T.to_dense(), dense.T, operator)
        assert_close(operator.adjoint() @ x.T, dense.T @ x.T.to(dense), operator)
        assert_close(operator.T.T.to_dense(), dense, operator)

    def test_adjoint_consistency(self, operator, dense):
        v = random_input(operator, operator.shape[1], seed=5)
        w = random_input(operator, operator.shape[0], seed=6)
        assert_close(torch.dot(operator @ v, w), torch.dot(v, operator.T @ w), operator)

    def test_algebra(self, operator, dense):
        combined = 2.0 * operator - operator / 4.0 + (-operator) + operator * 0.5
        assert_close(combined.to_dense(), 1.25 * dense, operator)
        assert_close((operator + dense.to(operator.dtype or dense.dtype)).to_dense(), 2 * dense, operator)
        product = operator.T @ operator
        assert_close(product.to_dense(), dense.T @ dense, operator)

    def test_scipy_export(self, operator, dense):
        scipy_operator = operator.to_scipy()
        assert isinstance(scipy_operator, ScipyLinearOperator)
        assert scipy_operator.shape == operator.shape
        x = numpy.random.default_rng(0).standard_normal(operator.shape[1])
        w = numpy.random.default_rng(1).standard_normal(operator.shape[0])
        dense_numpy = dense.cpu().to(torch.float64).numpy()
        assert_close(scipy_operator.matvec(x), dense_numpy @ x, operator)
        assert_close(scipy_operator.rmatvec(w), dense_numpy.T @ w, operator)
        assert_close(scipy_operator.matmat(numpy.eye(operator.shape[1])[:, :2]), dense_numpy[:, :2], operator)

    def test_wrong_shape_raises(self, operator, dense):
        with pytest.raises(ValueError, match=r"x must have shape"):
            operator @ torch.zeros(operator.shape[1] + 1, dtype=operator.dtype or torch.float64)
        with pytest.raises(ValueError, match=r"x must have shape"):
            operator @ torch.zeros(2, 2, operator.shape[1], dtype=operator.dtype or torch.float64)

    def test_tensor_list_inputs(self, operator, dense):
        """A list of tensors shaped like the input space (one flat vector where the space has no
        structure) gives a list shaped like the output space, for the operator and its transpose."""
        in_layout = operator.in_layout or TensorListLayout([(operator.shape[1],)])
        out_layout = operator.out_layout or TensorListLayout([(operator.shape[0],)])
        flat = random_input(operator, operator.shape[1], 2, seed=7)
        result = operator @ in_layout.unflatten_to_user_list(flat, is_vector=False)
        assert [tuple(t.shape) for t in result] == [(*shape, 2) for shape in out_layout.shapes]
        expected = dense @ flat.to(dense)
        assert_close(out_layout.flatten_user_list(result, name="result")[0], expected, operator)
        single = operator @ in_layout.unflatten_to_user_list(flat[:, :1], is_vector=True)
        assert [tuple(t.shape) for t in single] == [tuple(shape) for shape in out_layout.shapes]
        assert_close(
            out_layout.flatten_user_list(single, name="single")[0].reshape(-1), expected[:, 0], operator
        )
        w = random_input(operator, operator.shape[0], 1, seed=8)
        transposed = operator.T @ out_layout.unflatten_to_user_list(w, is_vector=True)
        assert [tuple(t.shape) for t in transposed] == [tuple(shape) for shape in in_layout.shapes]
        transposed, _ = in_layout.flatten_user_list(transposed, name="transposed")
        assert_close(transposed.reshape(-1), (dense.T @ w.to(dense))[:, 0], operator)


def contract_on_cases(cases: dict | None = None) -> type:
    """:class:`LinearOperatorContract` on ``(operator, dense)`` pairs from a ``case`` fixture.

    Args:
        cases: Builders of the pairs by name; the class gets a ``case`` fixture over them. With
            ``None``, the module defines its own ``case`` fixture.
    """

    class CaseContract(LinearOperatorContract):
        @pytest.fixture
        def operator(self, case):
            return case[0]

        @pytest.fixture
        def dense(self, case):
            return case[1]

    if cases is not None:

        @pytest.fixture(params=sorted(cases), scope="class")
        @classmethod
        def case(cls, request):
            return cases[request.param]()

        CaseContract.case = case
    return CaseContract
