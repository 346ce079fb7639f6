"""The dense curvature helpers the seed tutorials import (``curvkit.examples.functorch``)."""

from __future__ import annotations

import torch
from torch import nn

from curvkit.examples.functorch import (
    blocks_to_matrix,
    functorch_empirical_fisher,
    functorch_ggn,
    functorch_gradient_and_loss,
    functorch_hessian,
)

F64 = torch.float64


def test_functorch_input_key_is_ignored_for_tensor_inputs():
    """As in curvlinops: ``input_key`` names an entry of dict inputs and is ignored otherwise."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    data = [(torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 2, (4,)))]
    params = list(model.parameters())
    for build in (functorch_hessian, functorch_ggn, functorch_empirical_fisher):
        keyed = build(model, nn.CrossEntropyLoss(), params, data, input_key="x")
        torch.testing.assert_close(keyed, build(model, nn.CrossEntropyLoss(), params, data))


def test_gradient_and_loss_are_those_of_the_full_data_risk():
    """Two batches of a mean loss, and dict inputs by ``input_key``: autograd on all data at once."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    params = list(model.parameters())
    data = [(torch.randn(n, 3, dtype=F64), torch.randn(n, 2, dtype=F64)) for n in (4, 3)]
    loss = nn.MSELoss()(model(torch.cat([X for X, _ in data])), torch.cat([y for _, y in data]))
    expected = torch.autograd.grad(loss, params)
    gradient, value = functorch_gradient_and_loss(model, nn.MSELoss(), params, data)
    torch.testing.assert_close(value, loss.detach())
    for actual, wanted in zip(gradient, expected, strict=True):
        torch.testing.assert_close(actual, wanted)

    class Keyed(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, X):
            return self.inner(X["x"])

    keyed = [({"x": X}, y) for X, y in data]
    gradient, value = functorch_gradient_and_loss(Keyed(), nn.MSELoss(), params, keyed, input_key="x")
    torch.testing.assert_close(value, loss.detach())
    torch.testing.assert_close(gradient[0], expected[0])


def test_blocks_to_matrix_assembles_torch_funcs_hessian_by_name():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1)).double()
    X, y = torch.randn(5, 3, dtype=F64), torch.randn(5, 1, dtype=F64)

    def loss(named):
        return nn.MSELoss()(torch.func.functional_call(model, named, X), y)

    blocks = torch.func.hessian(loss)(dict(model.named_parameters()))
    dense = functorch_hessian(model, nn.MSELoss(), list(model.parameters()), [(X, y)])
    torch.testing.assert_close(blocks_to_matrix(blocks), dense)


def test_examples_gradient_and_loss_pass_over_the_batches_as_the_reference_concatenates_them():
    from curvkit.examples import gradient_and_loss

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    params = list(model.parameters())
    data = [
        (torch.randn(4, 3, dtype=F64), torch.tensor([0, -100, 2, 1])),
        (torch.randn(2, 3, dtype=F64), torch.tensor([1, 1])),
    ]
    gradient, loss = gradient_and_loss(model, nn.CrossEntropyLoss(), params, data)
    expected_gradient, expected_loss = functorch_gradient_and_loss(model, nn.CrossEntropyLoss(), params, data)
    torch.testing.assert_close(loss, expected_loss)
    for actual, expected in zip(gradient, expected_gradient, strict=True):
        torch.testing.assert_close(actual, expected)
