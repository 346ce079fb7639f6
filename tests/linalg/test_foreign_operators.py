"""Operators known only by ``@`` and ``.shape``: their precision, and routines that need ``Aᵀ``."""

from __future__ import annotations

import numpy
import pytest
import torch
from linalg_matrices import random_symmetric, with_spectrum

from curvkit.linalg import (
    LSMRInverseLinearOperator,
    hutchinson_diag,
    hutchinson_squared_fro,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_approximate_spectrum,
    lanczos_eigsh,
    power_iteration,
    xdiag,
    xtrace,
)


class MatOnly:
    """Anything with ``@`` and ``.shape``: no ``dtype``, no ``.T``; counts its products."""

    def __init__(self, matrix):
        self.matrix, self.shape, self.num_calls = matrix, matrix.shape, 0

    def __matmul__(self, x):
        self.num_calls += 1
        return self.matrix @ x


ROUTINES = {
    "hutchinson_trace": lambda A: hutchinson_trace(A, 4, seed=0),
    "hutchpp_trace": lambda A: hutchpp_trace(A, 6, seed=0),
    "xtrace": lambda A: xtrace(A, 6, seed=0),
    "hutchinson_diag": lambda A: hutchinson_diag(A, 4, seed=0),
    "hutchinson_squared_fro": lambda A: hutchinson_squared_fro(A, 4, seed=0),
    "lanczos_eigsh": lambda A: lanczos_eigsh(A, 2, seed=0)[0],
    "power_iteration": lambda A: power_iteration(A, seed=0)[0],
}


@pytest.mark.parametrize("routine", ROUTINES)
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
def test_a_dtype_less_operator_is_computed_in_its_precision(routine, dtype):
    matrix = random_symmetric(20).numpy().astype(dtype)
    result = ROUTINES[routine](MatOnly(matrix))
    assert result.dtype == {numpy.float64: torch.float64, numpy.float32: torch.float32}[dtype]


@pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")  # torch @ ndarray
def test_float32_torch_operator_without_dtype_still_works():
    """The dtype probe is a block of torch's default dtype: what such operators always got."""
    operator = MatOnly(random_symmetric(20).float())
    assert hutchinson_trace(operator, 4, seed=0).dtype == torch.float32


def test_float64_results_are_float64_accurate():
    A = with_spectrum(torch.logspace(0, 3, 50, dtype=torch.float64)).numpy()
    operator = MatOnly(A)
    trace = hutchpp_trace(operator, 150, seed=0)  # the basis spans the whole space: exact
    assert abs(float(trace) - numpy.trace(A)) < 1e-9
    assert operator.num_calls == 4  # the dtype probe, then the three blocks of Hutch++
    top = lanczos_eigsh(MatOnly(A), 1, tol=1e-12, seed=0)[0]
    assert abs(float(top) - 1e3) < 1e-9
    assert float(lanczos_approximate_spectrum(MatOnly(A), 10, seed=0)[0][-1]) > 1e3


@pytest.mark.parametrize(
    "routine, name",
    [
        (lambda A: xdiag(A, 6, seed=0), "xdiag"),
        (lambda A: LSMRInverseLinearOperator(A) @ numpy.ones(20), "lsmr"),
        (lambda A: LSMRInverseLinearOperator(A).T @ numpy.ones(20), "lsmr"),
    ],
)
def test_routines_needing_the_transpose_say_so(routine, name):
    with pytest.raises(
        TypeError, match=rf"{name} needs products with the transpose Aᵀ.*has no attribute 'T'"
    ):
        routine(MatOnly(random_symmetric(20).numpy()))
