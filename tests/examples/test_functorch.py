"""The dense curvature helpers the seed tutorials import (``curvkit.examples.functorch``)."""

from __future__ import annotations

import torch
from torch import nn

from curvkit.examples.functorch import functorch_empirical_fisher, functorch_ggn, functorch_hessian


def test_functorch_input_key_is_ignored_for_tensor_inputs():
    """As in curvlinops: ``input_key`` names an entry of dict inputs and is ignored otherwise."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    data = [(torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 2, (4,)))]
    params = list(model.parameters())
    for build in (functorch_hessian, functorch_ggn, functorch_empirical_fisher):
        keyed = build(model, nn.CrossEntropyLoss(), params, data, input_key="x")
        torch.testing.assert_close(keyed, build(model, nn.CrossEntropyLoss(), params, data))
