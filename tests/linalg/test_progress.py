"""One progress bar per run of an algorithm, counting the operator's products; none by default."""

from __future__ import annotations

import re

import pytest
import torch
from linalg_matrices import CountingOperator, low_rank_plus_noise

from curvkit.linalg import (
    CGInverseLinearOperator,
    LanczosApproximateSpectrumCached,
    LSMRInverseLinearOperator,
    NeumannInverseLinearOperator,
    conjugate_gradient,
    hutchinson_diag,
    hutchinson_squared_fro,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_approximate_log_spectrum,
    lanczos_approximate_spectrum,
    lanczos_eigsh,
    lsmr,
    power_iteration,
    xdiag,
    xtrace,
)


def _inverse(cls, setter):
    def run(A, progressbar):
        inverse = cls(A)
        getattr(inverse, setter)(progressbar=progressbar)
        return inverse @ torch.ones(A.shape[0], 2, dtype=torch.float64)

    return run


RUNS = {  # (bar label, run(A, progressbar))
    "hutchinson_trace": ("hutchinson_trace", lambda A, p: hutchinson_trace(A, 12, seed=0, progressbar=p)),
    "hutchpp_trace": ("hutchpp_trace", lambda A, p: hutchpp_trace(A, 12, seed=0, progressbar=p)),
    "xtrace": ("xtrace", lambda A, p: xtrace(A, 12, seed=0, progressbar=p)),
    "hutchinson_diag": ("hutchinson_diag", lambda A, p: hutchinson_diag(A, 12, seed=0, progressbar=p)),
    "xdiag": ("xdiag", lambda A, p: xdiag(A, 12, seed=0, progressbar=p)),
    "hutchinson_squared_fro": (
        "hutchinson_squared_fro",
        lambda A, p: hutchinson_squared_fro(A, 12, seed=0, progressbar=p),
    ),
    "lanczos_eigsh": ("lanczos_eigsh", lambda A, p: lanczos_eigsh(A, k=2, seed=0, progressbar=p)),
    "power_iteration": ("power_iteration", lambda A, p: power_iteration(A, seed=0, progressbar=p)),
    "conjugate_gradient": (
        "conjugate_gradient",
        lambda A, p: conjugate_gradient(A, torch.ones(A.shape[0], 2, dtype=torch.float64), progressbar=p),
    ),
    "lsmr": ("lsmr", lambda A, p: lsmr(A, torch.ones(A.shape[0], 2, dtype=torch.float64), progressbar=p)),
    "CGInverseLinearOperator": (
        "conjugate_gradient",
        _inverse(CGInverseLinearOperator, "set_cg_hyperparameters"),
    ),
    "LSMRInverseLinearOperator": ("lsmr", _inverse(LSMRInverseLinearOperator, "set_lsmr_hyperparameters")),
    "NeumannInverseLinearOperator": (
        "neumann",
        _inverse(NeumannInverseLinearOperator, "set_neumann_hyperparameters"),
    ),
    "lanczos_approximate_spectrum": (
        "Lanczos quadratures",
        lambda A, p: lanczos_approximate_spectrum(A, ncv=10, num_repeats=2, seed=0, progressbar=p),
    ),
    "lanczos_approximate_log_spectrum": (
        "Lanczos quadratures",
        lambda A, p: lanczos_approximate_log_spectrum(A, ncv=10, seed=0, progressbar=p),
    ),
    "LanczosApproximateSpectrumCached": (
        "Lanczos quadratures",
        lambda A, p: LanczosApproximateSpectrumCached(
            A, 10, (0.0, 110.0), seed=0, progressbar=p
        ).approximate_spectrum(num_repeats=3),
    ),
}


@pytest.mark.parametrize("name", RUNS)
def test_one_progress_bar_counts_every_product_of_a_run(name, capsys):
    label, run = RUNS[name]
    matrix = low_rank_plus_noise(n=40) / 110.0 if name.startswith("Neumann") else low_rank_plus_noise(n=40)
    A = CountingOperator(matrix, symmetric=True)
    A.max_columns = 3
    run(A, False)
    assert capsys.readouterr().err == ""  # off by default
    A.num_columns = 0
    run(A, True)
    bar = capsys.readouterr().err
    redrawn = [line for line in re.split(r"[\r\n]", bar) if line.strip()]
    assert redrawn and all(line.startswith(f"{label}:") for line in redrawn)  # one bar, no other
    # its last state counts every product: "n/total [...]" or, with no total known, "nproduct [...]"
    assert re.search(rf"(\| |: ){A.num_columns}(/\d+ |product )\[", redrawn[-1]), redrawn[-1]


def test_progressbar_must_be_a_bool():
    with pytest.raises(TypeError, match="progressbar must be True or False"):
        hutchinson_trace(torch.eye(3), 2, progressbar="yes")
