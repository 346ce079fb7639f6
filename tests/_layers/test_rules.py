"""The per-layer rules against torch.func: per-sample gradients and their squared sums, for every
supported layer type and geometry (hypothesis draws convolutions)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, grad, vmap

from curvkit._layers import convolution
from curvkit._layers.convolution import ConvolutionRule
from curvkit._layers.parameters import rule_of


def _per_sample_reference(module: nn.Module, inputs: torch.Tensor, cotangents: torch.Tensor) -> dict:
    """``∂⟨G_{k,n}, z_n⟩/∂θ`` for every column ``k`` and sample ``n``, by torch.func."""
    params = {name: tensor.detach() for name, tensor in module.named_parameters()}

    def inner(values, x, cotangent):
        output = functional_call(module, values, (x.unsqueeze(0),))[0]
        return (output * cotangent).sum()

    per_sample = vmap(grad(inner), in_dims=(None, 0, 0))  # over samples
    return vmap(per_sample, in_dims=(None, None, 0))(params, inputs, cotangents)  # over columns


def _check(module: nn.Module, inputs: torch.Tensor, num_columns: int = 3) -> None:
    module = module.double()
    output = module(inputs)
    cotangents = torch.randn(num_columns, *output.shape, dtype=torch.float64)
    rule = rule_of(module)
    assert rule is not None and rule.refusal(module) is None
    found = rule.per_sample_gradients(module, inputs, cotangents)
    expected = _per_sample_reference(module, inputs, cotangents)
    assert sorted(found) == sorted(expected)
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], rtol=1e-10, atol=1e-12)
    # squared sums over two uses of the layer: the per-sample gradients add before squaring
    second_inputs = inputs.flip(0)
    second_cotangents = torch.randn_like(cotangents)
    second = _per_sample_reference(module, second_inputs, second_cotangents)
    for uses in ([(inputs, cotangents)], [(inputs, cotangents), (second_inputs, second_cotangents)]):
        squares = rule.squared_gradient_sums(module, uses, list(expected))
        for name in expected:
            total = expected[name] + (second[name] if len(uses) == 2 else 0)
            torch.testing.assert_close(squares[name], total.square().sum((0, 1)), rtol=1e-10, atol=1e-12)


LAYERS = {
    "linear [N, in]": (lambda: nn.Linear(4, 3), (5, 4)),
    "linear [N, T, in]": (lambda: nn.Linear(4, 3), (5, 2, 4)),
    "linear [N, T, U, in], no bias": (lambda: nn.Linear(4, 3, bias=False), (5, 2, 3, 4)),
    "conv1d, stride, padding, dilation": (
        lambda: nn.Conv1d(2, 3, 3, stride=2, padding=2, dilation=2),
        (4, 2, 9),
    ),
    "conv1d, kernel 1": (lambda: nn.Conv1d(2, 3, 1), (4, 2, 5)),
    "conv2d, rectangular": (lambda: nn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=(1, 0)), (4, 2, 5, 6)),
    "conv2d, no bias, dilation": (lambda: nn.Conv2d(2, 3, 3, dilation=2, bias=False), (4, 2, 7, 7)),
    "conv3d": (
        lambda: nn.Conv3d(2, 3, (2, 3, 2), stride=(2, 1, 1), padding=(1, 0, 1), dilation=(1, 2, 1)),
        (3, 2, 5, 7, 4),
    ),
}


@pytest.mark.parametrize("case", sorted(LAYERS))
def test_per_sample_gradients_and_squared_sums(case):
    torch.manual_seed(0)
    build, shape = LAYERS[case]
    _check(build(), torch.randn(shape, dtype=torch.float64))


@pytest.mark.parametrize("padding_idx", [None, 1])
def test_embedding_rows_collect_their_samples_gradients(padding_idx):
    """Indices repeated within a sample add up before squaring; the padding row gets nothing."""
    torch.manual_seed(0)
    module = nn.Embedding(6, 3, padding_idx=padding_idx)
    indices = torch.tensor([[1, 2, 2], [0, 5, 1], [2, 2, 2], [4, 3, 1]])
    _check(module, indices)
    found = rule_of(module).per_sample_gradients(
        module.double(), indices, torch.randn(2, 4, 3, 3, dtype=torch.float64)
    )
    if padding_idx is not None:
        assert not found["weight"][:, :, padding_idx].any()


@settings(max_examples=25, deadline=None)
@given(
    dims=st.integers(1, 3),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    bias=st.booleans(),
    size=st.integers(4, 7),
)
def test_convolutions_of_any_geometry(dims, kernel, stride, padding, dilation, bias, size):
    convolution = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    if (size + 2 * padding - dilation * (kernel - 1) - 1) < 0:
        return  # no output position
    torch.manual_seed(0)
    module = convolution(2, 3, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)
    _check(module, torch.randn(3, 2, *[size] * dims, dtype=torch.float64), num_columns=2)


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        (nn.Conv2d(2, 4, 3, groups=2), "groups=2"),
        (nn.Conv2d(2, 4, 3, padding="same"), "padding='same'"),
        (nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"), "padding_mode='reflect'"),
        (nn.Embedding(4, 2, max_norm=1.0), "max_norm"),
        (nn.Embedding(4, 2, scale_grad_by_freq=True), "scale_grad_by_freq"),
    ],
)
def test_refusals_name_what_is_not_supported(module, reason):
    assert reason in rule_of(module).refusal(module)


@pytest.mark.parametrize(
    ("module", "shape"),
    [
        (nn.Conv1d(2, 3, 3, stride=2, padding=2, dilation=2), (2, 2, 9)),
        (nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 2, 7, 6)),
        (nn.Conv2d(2, 3, (3, 2), stride=(1, 2), padding=(0, 1), dilation=(2, 1)), (2, 2, 7, 6)),
        (nn.Conv3d(2, 3, 2, stride=2, padding=1, dilation=(1, 2, 1)), (2, 2, 5, 6, 4)),
    ],
    ids=["conv1d", "conv2d strided", "conv2d uneven", "conv3d"],
)
@pytest.mark.parametrize("channels_last_min", [1, convolution.CHANNELS_LAST_MIN])
def test_unfolded_patches_reproduce_the_convolution(module, shape, channels_last_min, monkeypatch):
    """``z = W ψ(a) + b`` position by position, the definition the rules rest on; the Gram rows
    are the same patches in the grid ``gram_grid`` gives (channels-last here from 1 channel),
    which it gives from as many rows per feature as ``CHANNELS_LAST_ROWS`` asks."""
    monkeypatch.setattr(convolution, "CHANNELS_LAST_MIN", channels_last_min)
    torch.manual_seed(0)
    module = module.double()
    inputs = torch.randn(shape, dtype=torch.float64)
    rows = ConvolutionRule.input_rows(module, inputs)
    output = rows @ module.weight.reshape(3, -1).T + module.bias
    torch.testing.assert_close(output.transpose(1, 2).reshape(module(inputs).shape), module(inputs))
    rows_per_feature = rows.shape[0] * rows.shape[1] / rows.shape[2]
    monkeypatch.setattr(convolution, "CHANNELS_LAST_ROWS", rows_per_feature * 1.01)
    assert ConvolutionRule.gram_grid(module, inputs) is None
    monkeypatch.setattr(convolution, "CHANNELS_LAST_ROWS", rows_per_feature)
    grid = ConvolutionRule.gram_grid(module, inputs)
    assert (grid is None) == (channels_last_min > module.in_channels)
    if grid is not None:
        gram_rows = ConvolutionRule.gram_rows(module, inputs)
        assert torch.equal(gram_rows.unflatten(-1, grid).transpose(-1, -2).flatten(-2), rows)


def test_subclasses_have_no_rule():
    class Scaled(nn.Linear):
        def forward(self, x):
            return 2.0 * super().forward(x)

    assert rule_of(Scaled(2, 2)) is None and rule_of(nn.LayerNorm(2)) is None


def test_transposed_convolutions_in_chunks_of_rows(monkeypatch):
    """Many rows (columns × samples) go through the transposed convolution in chunks: the same."""
    import curvkit._layers.convolution as convolution

    torch.manual_seed(0)
    module = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    gradients = torch.randn(7, 3, 3, 3, dtype=torch.float64)
    whole = convolution.input_gradient(module, gradients, module.weight.detach(), (5, 6))
    monkeypatch.setattr(convolution, "TRANSPOSED_ROWS", 3)
    chunked = convolution.input_gradient(module, gradients, module.weight.detach(), (5, 6))
    torch.testing.assert_close(chunked, whole)
    assert chunked.is_contiguous() and chunked.shape == (7, 2, 5, 6)
