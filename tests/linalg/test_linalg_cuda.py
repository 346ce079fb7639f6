"""The linalg routines on a CUDA operator give the CPU's results, on the device.

Skipped without CUDA (``device`` fixture in ``conftest.py``). Every randomized routine is
handed a CPU ``torch.Generator``: random blocks are drawn on the generator's device and moved
to the operator's, so both runs see the same test vectors and must agree to rounding (float64).
"""

import numpy
import pytest
import torch
from zoo import make_problem_from_id

from curvkit import GGNLinearOperator
from curvkit.linalg import (
    CGInverseLinearOperator,
    HutchinsonDiagonalEstimator,
    HutchinsonTraceEstimator,
    HutchPPTraceEstimator,
    LSMRInverseLinearOperator,
    NeumannInverseLinearOperator,
    damped,
    hutchinson_diag,
    hutchinson_squared_fro,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_approximate_log_spectrum,
    lanczos_approximate_spectrum,
    lanczos_eigsh,
    power_iteration,
    xdiag,
    xtrace,
)
from curvkit.linalg.deferred_lanczos import DeferredLanczosProcess
from curvkit.structured import IdentityLinearOperator
from curvkit.submatrix import SubmatrixLinearOperator

pytestmark = pytest.mark.cuda

PROBLEM_ID = "mlp-ce-mean-three-list"


def ggn(device: torch.device | str) -> GGNLinearOperator:
    problem = make_problem_from_id(PROBLEM_ID).to(device)
    return GGNLinearOperator(problem.model, problem.loss_func, problem.params, problem.data)


def _right_hand_side(A) -> torch.Tensor:
    return torch.randn(A.shape[0], 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _cg(A, generator):
    inverse = CGInverseLinearOperator(damped(A, 0.1))
    inverse.set_cg_hyperparameters(tol=1e-12)
    return inverse @ _right_hand_side(A).to(A.device)


def _lsmr(A, generator):
    inverse = LSMRInverseLinearOperator(damped(A, 0.1))
    inverse.set_lsmr_hyperparameters(atol=1e-12, btol=1e-12)
    return inverse @ _right_hand_side(A).to(A.device)


def _neumann(A, generator):
    # scale < 2 / λ_max(A + 0.1 I) makes the series converge
    inverse = NeumannInverseLinearOperator(damped(A, 0.1), num_terms=30, scale=0.5)
    return inverse @ _right_hand_side(A).to(A.device)


def _deferred_lanczos(A, generator):
    start = torch.randn(A.shape[0], dtype=torch.float64, generator=generator).to(A.device)
    process = DeferredLanczosProcess(A, start, max_dim=20)
    while process.size < process.max_dim and process.step():
        pass
    values, S, residuals = process.ritz_pairs()
    return values, S.abs(), residuals  # the signs of eigenvectors are arbitrary


def _eigsh(A, generator):
    values, vectors = lanczos_eigsh(A, k=3, tol=1e-10, seed=generator)
    return values, vectors.abs()


def _power(A, generator):
    value, vector = power_iteration(A, tol=1e-10, seed=generator)
    return value, vector.abs()


def _trace_estimator(cls, **kwargs):
    """Three samples of a trace estimator (Python floats)."""
    return lambda A, generator: [cls(A, seed=generator, **kwargs).sample() for _ in range(3)]


ROUTINES = {
    "hutchinson_trace": lambda A, g: hutchinson_trace(A, 5, seed=g),
    "hutchpp_trace": lambda A, g: hutchpp_trace(A, 9, seed=g),
    "xtrace": lambda A, g: xtrace(A, 10, distribution="normal", seed=g),
    "hutchinson_diag": lambda A, g: hutchinson_diag(A, 5, seed=g),
    "xdiag": lambda A, g: xdiag(A, 10, seed=g),
    "hutchinson_squared_fro": lambda A, g: hutchinson_squared_fro(A, 5, seed=g),
    "HutchinsonTraceEstimator": _trace_estimator(HutchinsonTraceEstimator),
    "HutchPPTraceEstimator": _trace_estimator(HutchPPTraceEstimator, basis_dim=6),
    "HutchinsonDiagonalEstimator": lambda A, g: torch.as_tensor(
        HutchinsonDiagonalEstimator(A, seed=g).sample()
    ),
    "lanczos_eigsh": _eigsh,
    "power_iteration": _power,
    "lanczos_approximate_spectrum": lambda A, g: lanczos_approximate_spectrum(
        A, ncv=20, num_points=64, num_repeats=3, seed=g
    ),
    "lanczos_approximate_log_spectrum": lambda A, g: lanczos_approximate_log_spectrum(
        A, ncv=20, num_points=64, num_repeats=2, seed=g
    ),
    "deferred_lanczos": _deferred_lanczos,
    "cg": _cg,
    "lsmr": _lsmr,
    "neumann": _neumann,
    "submatrix": lambda A, g: SubmatrixLinearOperator(A, [0, 5, 3], list(range(2, 12))).to_dense(),
}


def _outputs(result) -> list:
    return list(result) if isinstance(result, (tuple, list)) else [result]


@pytest.mark.parametrize("name", sorted(ROUTINES))
def test_device_run_equals_cpu_run(name, device):
    routine = ROUTINES[name]
    on_cpu = _outputs(routine(ggn("cpu"), torch.Generator().manual_seed(0)))
    on_device = _outputs(routine(ggn(device), torch.Generator().manual_seed(0)))
    assert len(on_cpu) == len(on_device)
    for expected, actual in zip(on_cpu, on_device):
        if isinstance(expected, numpy.ndarray):  # spectral densities: NumPy at the boundary
            assert isinstance(actual, numpy.ndarray)
            numpy.testing.assert_allclose(actual, expected, rtol=1e-7, atol=1e-9 * abs(expected).max())
            continue
        if isinstance(expected, float):  # trace estimators' samples
            assert isinstance(actual, float) and actual == pytest.approx(expected, rel=1e-7, abs=1e-9)
            continue
        assert actual.device == device, f"{name} returned a tensor on {actual.device}"
        scale = max(expected.abs().max().item(), 1e-12)
        torch.testing.assert_close(actual.cpu(), expected, rtol=1e-7, atol=1e-9 * scale)


def test_device_names_without_an_index_combine(device):
    """``device='cuda'`` is the current CUDA device, so it combines with operators on ``cuda:0``."""
    A = ggn(device)
    identity = IdentityLinearOperator(A.shape[0], dtype=A.dtype, device=device.type)
    assert identity.device == A.device
    x = torch.randn(A.shape[0], dtype=A.dtype, device=device)
    torch.testing.assert_close((A + identity) @ x, A @ x + x)
