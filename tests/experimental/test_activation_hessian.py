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


@pytest.mark.parametrize("widths", [(3, 3), (3, 5)])
def test_a_layer_that_runs_twice_is_refused(widths):
    """A shared module's input is two features: no silent Hessian of one of them, no shape error."""
    tanh = nn.Tanh()
    model = nn.Sequential(
        nn.Linear(4, widths[0]), tanh, nn.Linear(widths[0], widths[1]), tanh, nn.Linear(widths[1], 2)
    )
    data = [(torch.randn(5, 4), torch.randn(5, 2))]
    with pytest.raises(ValueError, match=r"activation\[0\] = '1' must run exactly once .* it ran 2 times"):
        ActivationHessianLinearOperator(model, nn.MSELoss(), ("1", "input", 0), data)


class _WithUnusedLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.unused = nn.Linear(4, 2), nn.ReLU()

    def forward(self, x):
        return self.body(x)


def test_a_layer_that_never_runs_is_refused():
    data = [(torch.randn(5, 4), torch.randn(5, 2))]
    with pytest.raises(ValueError, match="it ran 0 times"):
        ActivationHessianLinearOperator(_WithUnusedLayer(), nn.MSELoss(), ("unused", "output", 0), data)


def test_products_carry_no_autograd_graph(setup):
    model, loss_func, data = setup
    assert all(parameter.requires_grad for parameter in model.parameters())
    operator = ActivationHessianLinearOperator(model, loss_func, ("1", "input", 0), data)
    product = operator @ torch.ones(operator.shape[1], dtype=torch.float64)
    assert not product.requires_grad and product.grad_fn is None
    assert not operator.to_dense().requires_grad
