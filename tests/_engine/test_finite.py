"""NaN and infinity are named with their batch: inputs, targets, model output, loss; every operator.

The engine checks inputs and targets the first time it yields a batch (so with or without the
determinism probe), the construction checks the first batch's model output and loss, and the probe
every batch's. Before, these gave ``atol must be greater than or equal to zero, but got -nan``
or silently non-finite products.
"""

import pytest
import torch
from torch import nn
from zoo import Problem, build, make_problem_from_id

from curvkit import (
    GGNLinearOperator,
    LinearOperator,
)
from curvkit._engine.finite import nonfinite
from curvkit.experimental import ActivationHessianLinearOperator

OPERATORS = ["ef", "fisher_mc", "ggn", "ggn_diagonal", "hessian", "jacobian"]


def build_and_multiply(kind: str, problem: Problem, check_deterministic: bool) -> None:
    """Build the operator and multiply once: without the probe, the first product sees the data."""
    kwargs = {"check_deterministic": check_deterministic, "batch_size_fn": problem.batch_size_fn}
    result = build(kind, problem, **kwargs)
    if isinstance(result, LinearOperator):
        result @ torch.ones(result.shape[1], 2, dtype=torch.float64)


def _set(tensor: torch.Tensor, value: float) -> None:
    tensor.view(-1)[1] = value


# problem, what to corrupt in batch 1, the value, and the name the message must give
DATA_CASES = {
    "input NaN": ("mlp-mse-mean-three-list", lambda X, y: X, float("nan"), r"the input X"),
    "input -inf": ("mlp-mse-mean-three-list", lambda X, y: X, -float("inf"), r"the input X"),
    "MSE target NaN": ("mlp-mse-mean-three-list", lambda X, y: y, float("nan"), r"the target y"),
    "BCE target inf": ("mlp-bce-mean-one-list", lambda X, y: y, float("inf"), r"the target y"),
    "dict input inf": (
        "dict_input-mse-mean-three-list",
        lambda X, y: X["z"],
        float("inf"),
        r"the input X\['z'\]",
    ),
}


@pytest.mark.parametrize("check_deterministic", [True, False])
@pytest.mark.parametrize("kind", OPERATORS)
@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_non_finite_data_is_named_with_its_batch(case, kind, check_deterministic):
    problem_id, part, value, name = DATA_CASES[case]
    problem = make_problem_from_id(problem_id)
    index = len(problem.data) - 1  # the last batch: not the one the construction looks at
    _set(part(*problem.data[index]), value)
    with pytest.raises(ValueError, match=rf"batch {index}: {name} holds NaN or infinity\. Clean the data"):
        build_and_multiply(kind, problem, check_deterministic)


@pytest.mark.parametrize("check_deterministic", [True, False])
@pytest.mark.parametrize("kind", OPERATORS)
def test_non_finite_parameters_are_named_as_the_model_output(kind, check_deterministic):
    """Found on the first batch at construction, whether or not the probe runs."""
    problem = make_problem_from_id("mlp-ce-mean-three-list")
    with torch.no_grad():
        _set(problem.model[0].bias, float("nan"))
    named = "the model output holds" if kind == "jacobian" else "the model output and the loss hold"
    with pytest.raises(ValueError, match=rf"batch 0: {named} NaN or infinity\. The batch's inputs and"):
        build_and_multiply(kind, problem, check_deterministic)


@pytest.mark.parametrize("kind", [kind for kind in OPERATORS if kind != "jacobian"])
@pytest.mark.parametrize("index, check_deterministic", [(0, False), (1, True), (2, True)])
def test_a_loss_that_overflows_is_named(kind, index, check_deterministic):
    """Finite data, finite output, infinite loss: (f − 1e200)² overflows. Batch 0 is checked at
    construction, every batch by the determinism probe."""
    problem = make_problem_from_id("mlp-mse-mean-three-list")
    _set(problem.data[index][1], 1e200)
    with pytest.raises(ValueError, match=rf"batch {index}: the loss holds NaN or infinity"):
        build_and_multiply(kind, problem, check_deterministic)


@pytest.mark.parametrize("check_deterministic", [True, False])
@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda model, X, y: _set(X, float("nan")), "the input X holds"),
        (lambda model, X, y: _set(y, float("inf")), "the target y holds"),
        (lambda model, X, y: _set(model[0].bias.data, float("nan")), "the model output and the loss hold"),
    ],
    ids=["input", "target", "parameter"],
)
def test_activation_hessian_names_what_is_not_finite(corrupt, match, check_deterministic):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    corrupt(model, X, y)
    with pytest.raises(ValueError, match=rf"batch 0: {match} NaN or infinity"):
        ActivationHessianLinearOperator(
            model, nn.MSELoss(), ("1", "input", 0), [(X, y)], check_deterministic=check_deterministic
        )


def test_data_is_checked_once_per_batch(monkeypatch):
    """The first pass reads the data; later products do not read it again."""
    from curvkit._engine import iteration

    problem = make_problem_from_id("mlp-ce-mean-three-list")
    checked = []
    check = iteration.check_finite
    monkeypatch.setattr(
        iteration, "check_finite", lambda index, *args: (checked.append(index), check(index, *args))
    )
    G = GGNLinearOperator(
        problem.model, problem.loss_func, problem.params, problem.data, check_deterministic=False
    )
    G @ torch.ones(problem.dim, dtype=torch.float64)
    G @ torch.ones(problem.dim, dtype=torch.float64)
    assert checked == [0, 1, 2]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_nonfinite_finds_each_kind_of_entry_and_skips_what_cannot_be(dtype):
    finite = torch.randn(4, 3).to(dtype)
    cases = {name: finite.clone() for name in ("nan", "inf", "-inf")}
    for name, value in (("nan", float("nan")), ("inf", float("inf")), ("-inf", -float("inf"))):
        _set(cases[name], value)
    others = {
        "finite": finite,
        "integers": torch.arange(3),
        "empty": torch.empty(0, dtype=dtype),
        "none": None,
    }
    assert nonfinite({**cases, **others}) == ["nan", "inf", "-inf"]
    assert nonfinite(others) == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_nonfinite_does_not_take_an_overflowing_sum_of_finite_entries_for_infinity(dtype):
    largest = torch.finfo(dtype).max
    overflowing = torch.full((8,), largest, dtype=dtype)  # finite entries, an infinite sum
    assert torch.isinf(overflowing.sum())
    with_nan = overflowing.clone()
    _set(with_nan, float("nan"))
    assert nonfinite({"large": overflowing, "nan": with_nan}) == ["nan"]
