"""``gradient_and_loss()`` of the operators of a loss (curvlinops' method): the full data set's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvkit import (
    EFLinearOperator,
    EKFACLinearOperator,
    FisherMCLinearOperator,
    GGNLinearOperator,
    HessianLinearOperator,
    KFACLinearOperator,
)
from curvkit.reference import gradient_and_loss

F64 = torch.float64
OPERATORS = [
    HessianLinearOperator,
    GGNLinearOperator,
    EFLinearOperator,
    FisherMCLinearOperator,
    KFACLinearOperator,
    EKFACLinearOperator,
]


def _problem(loss_func: nn.Module):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    if isinstance(loss_func, nn.CrossEntropyLoss):  # ignored targets: K_b is not the batch size
        targets = [torch.tensor([0, -100, 2, 1]), torch.tensor([-100, 1])]
    else:
        targets = [torch.randn(n, 3, dtype=F64) for n in (4, 2)]
    data = [(torch.randn(len(y), 3, dtype=F64), y) for y in targets]
    return model, list(model.parameters()), data


@pytest.mark.parametrize("operator", OPERATORS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize(
    "loss_func",
    [nn.CrossEntropyLoss(ignore_index=-100), nn.MSELoss(reduction="sum"), nn.MSELoss()],
    ids=["ce-ignored", "mse-sum", "mse-mean"],
)
def test_gradient_and_loss_are_those_of_the_full_data_risk(operator, loss_func):
    model, params, data = _problem(loss_func)
    kfac_of_a_sum = issubclass(operator, KFACLinearOperator) and loss_func.reduction == "sum"
    kwargs = {"loss_average": None} if kfac_of_a_sum else {}
    gradient, loss = operator(model, loss_func, params, data, **kwargs).gradient_and_loss()
    expected_gradient, expected_loss = gradient_and_loss(model, loss_func, params, data)
    torch.testing.assert_close(loss, expected_loss)
    assert len(gradient) == len(params)
    for actual, expected in zip(gradient, expected_gradient):
        torch.testing.assert_close(actual, expected)


def test_gradient_and_loss_follow_the_current_parameters():
    model, params, data = _problem(nn.MSELoss())
    operator = GGNLinearOperator(model, nn.MSELoss(), params, data)
    _, before = operator.gradient_and_loss()
    with torch.no_grad():
        params[-1].add_(1.0)  # the output's bias: the loss changes
    _, after = operator.gradient_and_loss()
    torch.testing.assert_close(after, gradient_and_loss(model, nn.MSELoss(), params, data)[1])
    assert not torch.allclose(before, after)
