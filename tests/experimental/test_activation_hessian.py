"""The Hessian w.r.t. an intermediate feature, against torch.func on the feature directly."""

import pytest
import torch
from torch import nn
from torch.func import hessian

from curvkit.experimental import ActivationHessianLinearOperator


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    data = [(torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 2, (5,)))]
    return model, nn.CrossEntropyLoss(), data


def test_matches_hessian_of_the_loss_as_a_function_of_the_feature(setup):
    model, loss_func, data = setup
    (X, y), head = data[0], nn.Sequential(model[1], model[2])
    feature = model[0](X).detach()
    expected = hessian(lambda z: loss_func(head(z), y))(feature).reshape(feature.numel(), -1)
    for activation in [("0", "output", 0), ("1", "input", 0)]:
        operator = ActivationHessianLinearOperator(model, loss_func, activation, data)
        assert operator.shape == (15, 15) and operator.is_symmetric
        torch.testing.assert_close(operator.to_dense(), expected)


def test_bad_input(setup):
    model, loss_func, data = setup
    with pytest.raises(ValueError, match="exactly one batch"):
        ActivationHessianLinearOperator(model, loss_func, ("0", "output", 0), data + data)
    with pytest.raises(ValueError, match=r"activation\[0\] must name a layer"):
        ActivationHessianLinearOperator(model, loss_func, ("fc", "output", 0), data)
    with pytest.raises(ValueError, match=r"activation\[1\] must be 'input' or 'output'"):
        ActivationHessianLinearOperator(model, loss_func, ("0", "middle", 0), data)
    with pytest.raises(ValueError, match=r"activation\[2\] must index a tensor"):
        ActivationHessianLinearOperator(model, loss_func, ("0", "output", 3), data)
    with pytest.raises(ValueError, match=r"shape must be \(15, 15\)"):
        ActivationHessianLinearOperator(model, loss_func, ("0", "output", 0), data, shape=(3, 3))
