"""Kernel selection for derivatives (``differentiable_kernels``): which backends, for which models."""

import pytest
import torch
from torch import nn

from curvkit.operators._autograd import differentiable_kernels


@pytest.mark.parametrize(
    "model, recurrent",
    [
        (nn.Sequential(nn.Linear(2, 2)), False),
        (nn.Sequential(nn.Conv2d(1, 1, 1)), False),
        (nn.Sequential(nn.LSTM(2, 2)), True),
        (nn.GRU(2, 2), True),
        (lambda x: x, False),  # a plain callable: nothing to inspect
    ],
)
def test_recurrent_models_leave_onednn_and_cudnn_off_during_the_call(model, recurrent):
    before = torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled
    with differentiable_kernels(model):
        assert torch.backends.mkldnn.enabled == (before[0] and not recurrent)
        assert torch.backends.cudnn.enabled == (before[1] and not recurrent)
    assert (torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled) == before


def test_backends_are_restored_after_an_error():
    before = torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled
    with pytest.raises(ValueError, match="inside"), differentiable_kernels(nn.LSTM(2, 2)):
        raise ValueError("inside")
    assert (torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled) == before
