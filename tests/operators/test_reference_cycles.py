"""An operator is freed as soon as its last reference goes, with what it holds (KFAC's factors).

Reference counting frees an object the moment it is dropped; an object in a reference cycle waits
for the garbage collector, which runs at allocation counts, not sizes. KFAC's operator once sat in
a cycle through a check its setup kept, so every discarded KFAC kept its factors (at 10⁷
parameters, gigabytes) until the next collection, and each new one faulted fresh memory in.
"""

import gc
import weakref

import pytest
import torch
from zoo import CURVATURES, make_problem_from_id

from curvkit import EKFACLinearOperator, KFACLinearOperator


def _ekfac(p, data, **kw):
    ekfac = EKFACLinearOperator(p.model, p.loss_func, p.params, data, **kw)
    ekfac.compute_eigenvalue_correction()
    return ekfac


def _kfac(p, data, **kw):
    kfac = KFACLinearOperator(p.model, p.loss_func, p.params, data, **kw)
    kfac.compute_kronecker_factors()
    return kfac


OPERATORS = {
    **{kind: CURVATURES[kind] for kind in ("hessian", "ggn", "ef", "fisher_mc", "jacobian", "jacobian_T")},
    "kfac": _kfac,
    "kfac_inverse": lambda *args, **kw: _kfac(*args, **kw).inverse(damping=1e-3),
    "ekfac": _ekfac,
    "ekfac_inverse": lambda *args, **kw: _ekfac(*args, **kw).inverse(damping=1e-3, use_exact_damping=True),
}


@pytest.mark.parametrize("check_deterministic", [True, False])
@pytest.mark.parametrize("problem_id", ["mlp-mse-mean-three-list", "cnn-ce-mean-one-dict"])
@pytest.mark.parametrize("kind", sorted(OPERATORS))
def test_a_used_operator_is_freed_by_reference_counting(kind, problem_id, check_deterministic):
    problem = make_problem_from_id(problem_id)
    kwargs = {"check_deterministic": check_deterministic, "batch_size_fn": problem.batch_size_fn}

    def used_operator():
        operator = OPERATORS[kind](problem, problem.data, **kwargs)
        operator @ torch.ones(operator.shape[1], dtype=torch.float64)
        return operator

    # once before: a module torch imports lazily during a first product keeps the frames of
    # the import, and through them the caller, alive (torch's, not the operator's, one-off)
    used_operator()
    gc.collect()
    gc.disable()  # only reference counting may free it
    try:
        operator = used_operator()
        freed = weakref.ref(operator)
        del operator
        assert freed() is None, f"{kind} is kept alive by a reference cycle"
    finally:
        gc.enable()
