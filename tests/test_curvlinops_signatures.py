"""curvlinops 3.0.1's parameter names and positions, where code passes them by position or name.

The table records curvlinops 3.0.1's signatures (its leading positional-or-keyword parameters);
curvkit's must begin with the same names, in the same order, so that calls written for
curvlinops bind the same way. The curvature operators' constructors are not listed: they follow
the API reference (``shape`` seventh), which curvlinops 3.0.1 changed (docs/limitations.md).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect

import pytest

LEADING_PARAMETERS = {
    "CGInverseLinearOperator": ["A"],
    "LSMRInverseLinearOperator": ["A"],
    "NeumannInverseLinearOperator": ["A", "num_terms", "scale", "check_nan"],
    "KFACInverseLinearOperator": [
        "A",
        "damping",
        "use_heuristic_damping",
        "min_damping",
        "use_exact_damping",
        "cache",
        "retry_double_precision",
    ],
    "SubmatrixLinearOperator": ["A", "row_idxs", "col_idxs"],
    "SubmatrixLinearOperator.set_submatrix": ["row_idxs", "col_idxs"],
    "LinearOperator.to_scipy": ["dtype"],
    "LanczosApproximateSpectrumCached": ["A", "ncv", "boundaries", "boundaries_tol"],
    "LanczosApproximateSpectrumCached.approximate_spectrum": ["num_repeats", "num_points", "kappa", "margin"],
    "LanczosApproximateLogSpectrumCached.approximate_log_spectrum": [
        "num_repeats",
        "num_points",
        "kappa",
        "margin",
        "epsilon",
    ],
    "lanczos_approximate_spectrum": [
        "A",
        "ncv",
        "num_points",
        "num_repeats",
        "kappa",
        "boundaries",
        "margin",
        "boundaries_tol",
    ],
    "lanczos_approximate_log_spectrum": [
        "A",
        "ncv",
        "num_points",
        "num_repeats",
        "kappa",
        "boundaries",
        "margin",
        "boundaries_tol",
        "epsilon",
    ],
    "hutchinson_trace": ["A", "num_matvecs", "distribution"],
    "hutchpp_trace": ["A", "num_matvecs", "distribution"],
    "xtrace": ["A", "num_matvecs", "distribution"],
    "hutchinson_diag": ["A", "num_matvecs", "distribution"],
    "hutchinson_squared_fro": ["A", "num_matvecs", "distribution"],
    "xdiag": ["A", "num_matvecs"],
    "examples.IdentityLinearOperator": ["shape", "device", "dtype"],
    "examples.OuterProductLinearOperator": ["c", "A"],
    "examples.TensorLinearOperator": ["A"],
    "examples.functorch.blocks_to_matrix": ["blocks"],
    "examples.functorch.functorch_hessian": ["model_func", "loss_func", "params", "data", "input_key"],
    "examples.functorch.functorch_ggn": ["model_func", "loss_func", "params", "data", "input_key"],
    "examples.functorch.functorch_empirical_fisher": [
        "model_func",
        "loss_func",
        "params",
        "data",
        "input_key",
    ],
    "examples.functorch.functorch_gradient_and_loss": [
        "model_func",
        "loss_func",
        "params",
        "data",
        "input_key",
    ],
    "examples.functorch.functorch_jacobian": ["model_func", "params", "data", "input_key"],
}


def _resolve(path: str):
    """``curvkit.<path>``: the longest prefix that is a module, then attributes (a class's method)."""
    parts = path.split(".")
    cut = len(parts) - 1
    while cut and importlib.util.find_spec(".".join(["curvkit", *parts[:cut]])) is None:
        cut -= 1
    found = importlib.import_module(".".join(["curvkit", *parts[:cut]]))
    for part in parts[cut:]:
        found = getattr(found, part)
    return found


@pytest.mark.parametrize("path", sorted(LEADING_PARAMETERS))
def test_leading_parameters_are_curvlinops(path):
    target = _resolve(path)
    function = target.__init__ if inspect.isclass(target) else target
    names = [
        parameter.name
        for parameter in inspect.signature(function).parameters.values()
        if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and parameter.name != "self"
    ]
    expected = LEADING_PARAMETERS[path]
    assert names[: len(expected)] == expected
