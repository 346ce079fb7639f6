"""Shared fixtures: the problem zoo (see ``tests/zoo.py``) and cached dense references."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).parent))

from zoo import PROBLEM_IDS, SMALL_PROBLEM_IDS, Problem, make_problem_from_id

from curvkit import reference

# The zoo's problems are tiny: a second thread costs more in synchronization than it saves,
# and on a shared 2-core machine it oversubscribes the cores (25x slower products, measured).
torch.set_num_threads(1)

_REFERENCES: dict[str, Callable[..., Tensor]] = {
    "hessian": reference.hessian_matrix,
    "ggn": reference.ggn_matrix,
    "ef": reference.empirical_fisher_matrix,
    "fisher_mc": reference.fisher_mc_matrix,
}


@cache
def _cached_reference(problem_id: str, kind: str, mc_samples: int, seed: int) -> Tensor:
    problem = make_problem_from_id(problem_id)
    if kind == "jacobian":
        return reference.jacobian_matrix(problem.model, problem.params, problem.data, problem.batch_size_fn)
    extra = {"mc_samples": mc_samples, "seed": seed} if kind == "fisher_mc" else {}
    return _REFERENCES[kind](
        problem.model, problem.loss_func, problem.params, problem.data, problem.batch_size_fn, **extra
    )


def dense_reference(problem_id: str, kind: str, mc_samples: int = 1, seed: int = 2147483647) -> Tensor:
    """Dense ``kind`` matrix (hessian, ggn, ef, fisher_mc, jacobian) of a zoo problem, cached.

    Returns a fresh copy, so callers may modify it.
    """
    return _cached_reference(problem_id, kind, mc_samples, seed).clone()


@pytest.fixture(params=PROBLEM_IDS, ids=PROBLEM_IDS, scope="session")
def problem_id(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def problem(problem_id: str) -> Problem:
    """A freshly built zoo problem (cheap: about a millisecond), so tests may modify it."""
    return make_problem_from_id(problem_id)


@pytest.fixture(params=SMALL_PROBLEM_IDS, ids=SMALL_PROBLEM_IDS, scope="session")
def small_problem_id(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def small_problem(small_problem_id: str) -> Problem:
    """A freshly built problem from the short list, for expensive checks."""
    return make_problem_from_id(small_problem_id)


@pytest.fixture(scope="session")
def reference_of() -> Callable[..., Tensor]:
    """``reference_of(problem.name, "hessian")``: the cached dense reference of a zoo problem."""
    return dense_reference


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The accelerator under test: CUDA, skipped without one.

    ``CURVKIT_TEST_DEVICE=cpu`` runs the device tests on the CPU instead, to check the tests
    themselves on a machine without a GPU. TF32 convolutions (PyTorch's default on Ampere and
    newer GPUs) are switched off: they agree with float64 only to about 1e-3, and these tests
    check curvkit's arithmetic at float32 precision.
    """
    name = os.environ.get("CURVKIT_TEST_DEVICE", "cuda")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return torch.empty(0, device=name).device  # indexed, as the devices of tensors are (cuda:0)
