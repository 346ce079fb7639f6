"""Where NumPy, SciPy and Python numbers meet the operators: dtypes, scalars, dimensions, views."""

import subprocess
import sys
import warnings

import numpy
import pytest
import scipy.sparse
import torch
from scipy.sparse.linalg import aslinearoperator, lsmr

from curvkit import DiagonalLinearOperator, IdentityLinearOperator, LinearOperator, as_linear_operator
from curvkit.linear_operator import DenseLinearOperator


def _real():
    return as_linear_operator(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64))


# ----------------------------------------------------------------------------- complex numbers
COMPLEX_OPERATORS = {
    "tensor": lambda: as_linear_operator(torch.eye(2, dtype=torch.complex128)),
    "ndarray": lambda: as_linear_operator(numpy.eye(2, dtype=numpy.complex64)),
    "scipy operator": lambda: as_linear_operator(aslinearoperator(numpy.eye(2, dtype=complex))),
    "diagonal": lambda: DiagonalLinearOperator(torch.ones(2, dtype=torch.complex64)),
    "base dtype": lambda: LinearOperator((2, 2), dtype=torch.complex64),
    "sum with complex": lambda: _real() + torch.eye(2, dtype=torch.complex128),
}
COMPLEX_INPUTS = {
    "tensor": lambda A: A @ torch.ones(2, dtype=torch.complex128),
    "ndarray": lambda A: A @ numpy.ones(2, dtype=complex),
    "left product": lambda A: torch.ones(2, dtype=torch.complex128) @ A,
    "scipy view": lambda A: A.to_scipy().matvec(numpy.ones(2, dtype=complex)),
    "scipy view adjoint": lambda A: A.to_scipy().H.matvec(numpy.ones(2, dtype=complex)),
    "scalar": lambda A: (1 + 2j) * A,
    "0-d tensor scalar": lambda A: A * torch.tensor(1j),
    "numpy scalar": lambda A: numpy.complex64(1j) * A,
}


@pytest.mark.parametrize("build", list(COMPLEX_OPERATORS.values()), ids=list(COMPLEX_OPERATORS))
def test_complex_operators_are_refused(build):
    with pytest.raises(TypeError, match="real"):
        build()


@pytest.mark.parametrize("use", list(COMPLEX_INPUTS.values()), ids=list(COMPLEX_INPUTS))
def test_complex_inputs_are_refused_not_truncated(use):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match="real"):
            use(_real())


# ----------------------------------------------------------------------------- half precision
@pytest.mark.parametrize(
    "dtype, numpy_dtype", [(torch.bfloat16, numpy.float32), (torch.float16, numpy.float16)]
)
def test_half_precision_operators_meet_numpy(dtype, numpy_dtype):
    """NumPy has no bfloat16: its arrays come back as float32, which holds every bfloat16."""
    operator = as_linear_operator(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=dtype))
    with pytest.warns(UserWarning, match="Converting"):
        result = operator @ numpy.ones(2)
    assert result.dtype == numpy_dtype
    numpy.testing.assert_array_equal(result, [3.0, 7.0])
    view = operator.to_scipy()
    assert view.dtype == numpy_dtype
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        numpy.testing.assert_array_equal(view.matvec(numpy.ones(2)), [3.0, 7.0])
        numpy.testing.assert_array_equal(view.rmatvec(numpy.ones(2)), [4.0, 6.0])


# ----------------------------------------------------------------------------- NumPy arrays
READ_ONLY_SCRIPT = """
import warnings, numpy, torch
from curvkit import as_linear_operator
operator = as_linear_operator(torch.eye(3, dtype=torch.float32))
for dtype, expected_warnings in ((numpy.float32, 0), (numpy.float64, 1)):
    x = numpy.arange(3, dtype=dtype)
    x.setflags(write=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = operator @ x
    assert len(caught) == expected_warnings, [str(warning.message) for warning in caught]
    assert numpy.array_equal(result, [0.0, 1.0, 2.0])
"""


def test_read_only_arrays_are_copied_without_a_torch_warning():
    """Torch warns about non-writable arrays once per process, so the check runs in a fresh one."""
    completed = subprocess.run([sys.executable, "-c", READ_ONLY_SCRIPT], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr


CONVERSION_SCRIPT = """
import numpy, torch
from curvkit.linear_operator import DenseLinearOperator
A = DenseLinearOperator(torch.eye(3))
first = A @ numpy.ones(3)
second = A @ numpy.ones((3, 2))
third = numpy.ones(3) @ A
"""


def test_float64_arrays_into_a_float32_operator_warn_once_per_process():
    """As in the seed tutorials: one warning, not one per line of user code that multiplies."""
    completed = subprocess.run([sys.executable, "-c", CONVERSION_SCRIPT], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr.count("Converting to float32") == 1, completed.stderr


INTEGER_OPERATORS = {
    "ndarray": lambda matrix: matrix,
    "sparse matrix": scipy.sparse.csr_matrix,
    "sparse array": scipy.sparse.csr_array,
    "scipy operator": aslinearoperator,
}


@pytest.mark.parametrize("build", list(INTEGER_OPERATORS.values()), ids=list(INTEGER_OPERATORS))
def test_integer_operators_compute_in_the_default_dtype(build):
    operator = as_linear_operator(build(numpy.array([[1, 2], [3, 4]], dtype=numpy.int64)))
    assert operator.dtype == torch.get_default_dtype()
    torch.testing.assert_close(operator @ torch.ones(2), torch.tensor([3.0, 7.0]))
    torch.testing.assert_close(torch.ones(2) @ operator, torch.tensor([4.0, 6.0]))
    torch.testing.assert_close(
        (operator + IdentityLinearOperator(2)).to_dense(), torch.tensor([[2.0, 2.0], [3.0, 5.0]])
    )


@pytest.mark.parametrize(
    "dim", [3, numpy.int64(3), numpy.int32(3), numpy.uint8(3), torch.tensor(3), torch.tensor([3])], ids=repr
)
def test_dimensions_may_be_numpy_integers_or_integer_tensors(dim):
    assert IdentityLinearOperator(dim).shape == (3, 3)
    shape = LinearOperator((dim, numpy.int16(2))).shape
    assert shape == (3, 2) and all(type(size) is int for size in shape)


@pytest.mark.parametrize(
    "dim",
    [
        True,
        3.0,
        numpy.float64(3),
        -1,
        numpy.int64(-1),
        torch.tensor(3.0),
        torch.tensor(True),
        torch.tensor([3, 3]),
    ],
    ids=repr,
)
def test_dimensions_must_be_non_negative_integers(dim):
    with pytest.raises(ValueError, match="non-negative integer"):
        IdentityLinearOperator(dim)
    with pytest.raises(ValueError, match="non-negative integer"):
        LinearOperator((2, dim))


# ----------------------------------------------------------------------------- SciPy views
@pytest.mark.parametrize(
    "operator_dtype, x_dtype, view_dtype, result_dtype",
    [
        (None, numpy.float64, numpy.float64, numpy.float64),
        (None, numpy.float32, numpy.float64, numpy.float64),
        (None, numpy.int64, numpy.float64, numpy.float64),
        (torch.float32, numpy.float64, numpy.float32, numpy.float64),
        (torch.float32, numpy.float32, numpy.float32, numpy.float32),
        (torch.float64, numpy.float32, numpy.float64, numpy.float64),
    ],
)
def test_scipy_view_returns_the_promoted_dtype(operator_dtype, x_dtype, view_dtype, result_dtype):
    """Like a NumPy matrix of the view's dtype; an adaptive one computes in float64, no rounding."""
    view = IdentityLinearOperator(3, dtype=operator_dtype).to_scipy()
    x = numpy.array([1 / 3, 2.0, -1 / 7]).astype(x_dtype)
    computed = x.astype(result_dtype if operator_dtype is None else view_dtype)
    assert view.dtype == view_dtype
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for result in (view.matvec(x), view.rmatvec(x), view.matmat(x[:, None])[:, 0]):
            assert result.dtype == result_dtype
            numpy.testing.assert_array_equal(result, computed.astype(result_dtype))


def test_scipy_views_dtype_may_be_given_as_curvlinops_takes_it():
    """``to_scipy(dtype=numpy.float64)`` of a float32 operator: a float64 view computing in float32."""
    operator = DenseLinearOperator(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    view = operator.to_scipy(dtype=numpy.float64)
    assert view.dtype == numpy.float64
    result = view.matvec(numpy.ones(2, dtype=numpy.float32))
    assert result.dtype == numpy.float64 and result.tolist() == [3.0, 7.0]
    for dtype in (numpy.int64, numpy.complex128, "bogus"):
        with pytest.raises(ValueError, match="dtype must be a real floating-point NumPy dtype or None"):
            operator.to_scipy(dtype=dtype)


def test_lsmr_on_a_float32_view_is_quiet_and_accurate():
    """float32 products for float64 vectors made lsmr overflow its float64 constants in float32."""
    rng = numpy.random.default_rng(0)  # a case that warned (whether one does depends on the data)
    matrix = rng.standard_normal((50, 50)).astype(numpy.float32)
    matrix = matrix @ matrix.T + 50 * numpy.eye(50, dtype=numpy.float32)
    rhs = rng.standard_normal(50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solution, istop, *_, cond, _ = lsmr(as_linear_operator(matrix).to_scipy(), rhs, atol=1e-6, btol=1e-6)
    assert istop in (1, 2) and numpy.isfinite(cond)
    expected = numpy.linalg.solve(matrix.astype(numpy.float64), rhs)
    numpy.testing.assert_allclose(solution, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "x, dtype_name",
    [
        (torch.arange(3), "int64"),
        (numpy.arange(3, dtype=numpy.int32), "int32"),
        (torch.ones(3, dtype=torch.bool), "bool"),
        (torch.arange(3, dtype=torch.float64), "float64"),
    ],
    ids=["int64", "int32 array", "bool", "float64"],
)
def test_inputs_of_another_dtype_are_converted_with_a_warning_by_one_rule(x, dtype_name):
    operator = as_linear_operator(torch.eye(3))
    with pytest.warns(UserWarning, match=f"x is {dtype_name}, while the linear operator is float32"):
        result = operator @ x
    assert result.dtype == (torch.float32 if isinstance(result, torch.Tensor) else numpy.float32)
    numpy.testing.assert_array_equal(numpy.asarray(result), numpy.asarray(x, dtype=numpy.float32))


def test_integer_inputs_of_an_operator_without_dtype_compute_in_the_default_dtype_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = IdentityLinearOperator(3) @ torch.arange(3)
    assert result.dtype == torch.get_default_dtype()


def test_counts_may_be_integer_tensors_as_curvlinops_takes_them():
    """``hutchinson_trace(A, torch.tensor(3))``: the count read from the tensor, the estimate unchanged."""
    from curvkit import hutchinson_trace

    operator = DiagonalLinearOperator(torch.arange(1.0, 5.0, dtype=torch.float64))
    expected = hutchinson_trace(operator, 3, seed=0)
    assert hutchinson_trace(operator, torch.tensor(3), seed=0) == expected
