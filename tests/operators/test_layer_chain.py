"""Hessian products of layer chains (MLPs) by hand: used where the model is one, equal to the
reference for every elementwise module, parameter subset and block, and left alone elsewhere.

Most tests switch the agreement check off (``unchecked``), so that a wrong product fails them
instead of being replaced by the general path's.
"""

from itertools import pairwise

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from zoo import make_problem_from_id

from curvkit import HessianLinearOperator, reference
from curvkit._engine import Batch
from curvkit._layers.chain import LayerChain
from curvkit._layers.parameters import layer_map
from curvkit._layers.segments import ELEMENTWISE
from curvkit.operators._shortcut import AgreementCheck


@pytest.fixture
def unchecked(monkeypatch):
    """The chain's products as they are, not replaced by the general path's where they differ."""
    monkeypatch.setattr(AgreementCheck, "checked", lambda self, result, general: result)


def _assert_matches(dense, expected):
    expected = expected.detach()
    torch.testing.assert_close(dense, expected, rtol=1e-7, atol=1e-10 * float(expected.abs().max()))


def _problem(model, num_inputs=(6,), loss_func=None, sizes=(5, 3), num_outputs=3):
    """``model`` in float64 with batches of ``sizes`` and class (or regression) targets."""
    torch.manual_seed(1)
    model = model.double().eval()
    loss_func = loss_func or nn.CrossEntropyLoss()
    data = []
    for size in sizes:
        X = torch.randn(size, *num_inputs, dtype=torch.float64)
        if isinstance(loss_func, nn.CrossEntropyLoss):
            y = torch.randint(0, num_outputs, (size,))
        else:
            y = torch.rand(size, num_outputs, dtype=torch.float64)
        data.append((X, y))
    return model, loss_func, data


def _hessian(model, loss_func, params, data, **kwargs):
    operator = HessianLinearOperator(model, loss_func, params, data, **kwargs)
    assert operator._layer_chain is not None
    return operator


@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
@pytest.mark.parametrize(
    "problem_id",
    [
        "mlp-ce-mean-three-list",
        "mlp-mse-sum-one-dict",
        "mlp-bce-mean-three-subset",
        "mlp-ce-sum-one-list-f32",
        "cnn-ce-mean-three-list",
        "cnn-mse-sum-one-dict",
        "cnn-bce-mean-three-subset",
    ],
)
def test_zoo_chains_match_the_reference(problem_id, cached, unchecked, reference_of):
    """The zoo's MLP (ReLU, Sigmoid, Tanh) and CNN (a strided, padded convolution, Flatten, a
    linear layer) for each loss; single vectors and blocks of columns."""
    problem = make_problem_from_id(problem_id)
    operator = _hessian(problem.model, problem.loss_func, problem.params, problem.data, cache_batches=cached)
    dense = operator.to_dense()
    expected = reference_of(problem.name, "hessian").detach()
    vector = torch.randn(operator.shape[0], 1, dtype=problem.dtype)
    matvec = operator @ vector
    if cached:
        assert any(key == "layer chain" for _, key in operator._setup.cache.entries)
        dense = operator.to_dense()
    rtol, atol = (1e-7, 1e-10) if problem.dtype == torch.float64 else (1e-4, 1e-5)
    scale = float(expected.abs().max())
    torch.testing.assert_close(dense.to(expected), expected, rtol=rtol, atol=atol * scale)
    torch.testing.assert_close(matvec, expected.to(vector) @ vector, rtol=rtol, atol=10 * atol * scale)


def test_the_check_against_the_general_path_passes():
    """With the check on, the chain's first product agrees with reverse over reverse."""
    problem = make_problem_from_id("mlp-ce-mean-three-list")
    operator = _hessian(problem.model, problem.loss_func, problem.params, problem.data)
    operator.to_dense()
    assert operator._chain_check.verified_modes is not None and not operator._chain_check.failed


@pytest.mark.parametrize(
    "activation",
    [
        *(kind() for kind in ELEMENTWISE if kind not in (nn.Dropout, nn.LeakyReLU, nn.ELU)),
        nn.LeakyReLU(0.3),
        nn.ELU(0.7),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),  # in eval mode: the identity
    ],
    ids=lambda activation: repr(activation),
)
def test_every_elementwise_module(activation, unchecked):
    """φ' and φ'' in forward mode, for each module the chain admits; inputs reshaped by Flatten."""
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(6, 5), activation, nn.Linear(5, 4), activation, nn.Linear(4, 3)
    )
    model, loss_func, data = _problem(model, num_inputs=(2, 3))
    params = list(model.parameters())
    _assert_matches(
        _hessian(model, loss_func, params, data).to_dense(),
        reference.hessian_matrix(model, loss_func, params, data),
    )


@pytest.mark.parametrize(
    "structure",
    ["nested-final-activation", "consecutive-activations", "frozen-layer-no-bias", "single-layer"],
)
def test_chain_structures(structure, unchecked):
    """Nested containers, an activation on the output (MSE after a sigmoid), activations in a
    row, a layer without bias, a frozen layer the tangents pass through, logistic regression."""
    loss_func = None
    if structure == "nested-final-activation":
        model = nn.Sequential(nn.Linear(6, 5), nn.Sequential(nn.Tanh(), nn.Linear(5, 3)), nn.Sigmoid())
        loss_func = nn.MSELoss()
    elif structure == "consecutive-activations":
        model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.LeakyReLU(0.2), nn.SiLU(), nn.Linear(5, 3))
    elif structure == "frozen-layer-no-bias":
        model = nn.Sequential(
            nn.Linear(6, 5, bias=False), nn.GELU(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)
        )
        model[2].requires_grad_(False)
    else:
        model = nn.Sequential(nn.Linear(6, 3))
    model, loss_func, data = _problem(model, loss_func=loss_func)
    params = [p for p in model.parameters() if p.requires_grad]
    _assert_matches(
        _hessian(model, loss_func, params, data).to_dense(),
        reference.hessian_matrix(model, loss_func, params, data),
    )


@pytest.mark.parametrize(
    "selection",
    [[3], [0, 5], [2, 3], [1, 4]],
    ids=["middle-bias", "first-weight-last-bias", "middle-layer", "first-bias-last-weight"],
)
def test_parameter_subsets(selection, unchecked):
    """Tangents start at the first layer with a parameter, gradients go down to it."""
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    model, loss_func, data = _problem(model)
    every = list(model.parameters())
    params = [every[index] for index in selection]
    _assert_matches(
        _hessian(model, loss_func, params, data).to_dense(),
        reference.hessian_matrix(model, loss_func, params, data),
    )


def test_hessian_blocks(unchecked):
    """Each diagonal block is a product with the other blocks' tangents left out."""
    model = nn.Sequential(nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    model, loss_func, data = _problem(model)
    params = list(model.parameters())
    block_sizes = [2, 1, 3]
    dense = _hessian(model, loss_func, params, data, block_sizes=block_sizes).to_dense()
    full = reference.hessian_matrix(model, loss_func, params, data).detach()
    expected = torch.zeros_like(full)
    bounds = [0]
    for size, start in zip(block_sizes, [0, 2, 3]):
        bounds.append(bounds[-1] + sum(p.numel() for p in params[start : start + size]))
    for start, stop in pairwise(bounds):
        expected[start:stop, start:stop] = full[start:stop, start:stop]
    _assert_matches(dense, expected)


class Wrapped(nn.Sequential):
    """A subclass may compute something else: not taken for a chain."""


def _hooked():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    model[1].register_forward_hook(lambda module, args, output: 2 * output)
    return model


def _shared():
    layer = nn.Linear(5, 5)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), layer, nn.Tanh(), layer, nn.Linear(5, 3))


def _tied():
    model = nn.Sequential(nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3))
    model[2].weight = model[0].weight
    return model


@pytest.mark.parametrize(
    "build",
    [
        lambda: Wrapped(nn.Linear(6, 3)),
        _hooked,
        _shared,
        _tied,
        lambda: nn.Sequential(nn.Linear(6, 5), nn.PReLU(), nn.Linear(5, 3)),
        lambda: nn.Sequential(nn.Flatten(0), nn.Linear(6, 3)),
        lambda: nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3)),
    ],
    ids=["subclass", "hook", "shared-layer", "tied-weights", "prelu", "flatten-dims", "layernorm"],
)
def test_other_models_are_no_chains(build):
    model = build()
    params = list(model.parameters())
    assert LayerChain.of(model, layer_map(model, params), len(params)) is None


def test_rows_that_are_not_samples_keep_the_general_path(unchecked):
    """Linear layers on ``[N, T, d]`` act on ``N·T`` rows: no chain for such a batch."""
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3), nn.Flatten())
    model, loss_func, data = _problem(model, num_inputs=(4, 6), loss_func=nn.MSELoss(), num_outputs=12)
    operator = _hessian(model, loss_func, params := list(model.parameters()), data)
    dense = operator.to_dense()
    assert operator._chain_check.verified_modes is None  # nothing went through the chain
    _assert_matches(dense, reference.hessian_matrix(model, loss_func, params, data))


def test_dropout_in_train_mode_is_no_identity():
    model = nn.Sequential(nn.Linear(6, 5), nn.Dropout(0.5), nn.Linear(5, 3))
    model, loss_func, data = _problem(model)
    operator = HessianLinearOperator(
        model, loss_func, list(model.parameters()), data, check_deterministic=False
    )
    model.train()
    batch = next(iter(operator._setup.engine.batches()))
    assert operator._layer_chain.linearize(batch, loss_func) is None
    model.eval()
    assert operator._layer_chain.linearize(batch, loss_func) is not None


def _convolutional(kind: str) -> tuple[nn.Module, tuple[int, ...], nn.Module]:
    """A chain with convolutions, its input shape per sample, its loss."""
    if kind == "conv1d-sequence-output":  # output [N, C, T] for cross-entropy over positions
        model = nn.Sequential(
            nn.Conv1d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv1d(4, 3, 3, stride=2, padding=1)
        )
        return model, (2, 7), nn.CrossEntropyLoss()
    if kind == "conv3d":
        model = nn.Sequential(nn.Conv3d(1, 2, 2, padding=1), nn.Softplus(), nn.Flatten(), nn.Linear(54, 3))
        return model, (1, 2, 2, 2), nn.CrossEntropyLoss()
    model = nn.Sequential(  # no bias, dilation, stride 2 with an input size it maps like a smaller one
        nn.Conv2d(2, 3, 3, dilation=2, bias=False),
        nn.Sigmoid(),
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16, 3),
    )
    return model, (2, 8, 8), nn.MSELoss()


@pytest.mark.parametrize("selection", ["all", "convolution-biases", "second-convolution"])
@pytest.mark.parametrize("kind", ["conv1d-sequence-output", "conv2d", "conv3d"])
def test_convolutions(kind, selection, unchecked):
    """Stacked kernels, kernel gradients and transposed convolutions, against the reference."""
    torch.manual_seed(2)
    model, input_shape, loss_func = _convolutional(kind)
    model = model.double().eval()
    data = []
    for size in (4, 3):
        X = torch.randn(size, *input_shape, dtype=torch.float64)
        output = model(X)
        if isinstance(loss_func, nn.CrossEntropyLoss):
            y = torch.randint(0, output.shape[1], (size, *output.shape[2:]))
        else:
            y = torch.rand_like(output)
        data.append((X, y))
    convolutions = [module for module in model if isinstance(module, nn.modules.conv._ConvNd)]
    if selection == "all":
        params = list(model.parameters())
    elif selection == "convolution-biases":
        params = [module.bias for module in convolutions if module.bias is not None]
    else:
        params = list(convolutions[-1].parameters())
    _assert_matches(
        _hessian(model, loss_func, params, data).to_dense(),
        reference.hessian_matrix(model, loss_func, params, data),
    )


ACTIVATIONS = [nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.Softplus, nn.ELU, nn.Identity]


# the monkeypatch of `unchecked` holds for every example alike
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    widths=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    activations=st.lists(st.lists(st.sampled_from(ACTIVATIONS), max_size=2), min_size=4, max_size=4),
    selection=st.lists(st.booleans(), min_size=8, max_size=8),
    loss=st.sampled_from(["ce", "mse"]),
    num_columns=st.integers(1, 3),
)
def test_random_chains(widths, activations, selection, loss, num_columns, unchecked):
    """Random depths, widths, activations (none, one or two in a row), parameter subsets and
    numbers of columns: the chain's products equal the dense reference Hessian's."""
    torch.manual_seed(len(widths))
    sizes = [3, *widths, 2]
    modules = []
    for position, (fan_in, fan_out) in enumerate(pairwise(sizes)):
        modules.append(nn.Linear(fan_in, fan_out))
        modules += [activation() for activation in activations[position]]
    model = nn.Sequential(*modules)
    loss_func = nn.CrossEntropyLoss() if loss == "ce" else nn.MSELoss()
    model, loss_func, data = _problem(model, num_inputs=(3,), loss_func=loss_func, num_outputs=2)
    every = list(model.parameters())
    params = [tensor for tensor, chosen in zip(every, selection) if chosen] or every[:1]
    operator = _hessian(model, loss_func, params, data)
    columns = torch.randn(operator.shape[0], num_columns, dtype=torch.float64)
    expected = reference.hessian_matrix(model, loss_func, params, data).detach() @ columns
    scale = float(expected.abs().max())
    torch.testing.assert_close(operator @ columns, expected, rtol=1e-7, atol=1e-10 * scale)


@st.composite
def _convolution_stacks(draw):
    """A random stack of 2-d convolutions (kernel, stride, padding, dilation, bias), activations,
    max or average pooling, and a head."""
    channels, size, modules = draw(st.integers(1, 2)), draw(st.integers(5, 7)), []
    input_shape = (channels, size, size)
    for _ in range(draw(st.integers(1, 2))):
        kernel, stride, dilation = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
        padding = draw(st.integers(0, kernel // 2))
        reach = dilation * (kernel - 1) + 1
        if size + 2 * padding < reach:
            break
        out_channels = draw(st.integers(1, 3))
        modules.append(
            nn.Conv2d(channels, out_channels, kernel, stride, padding, dilation, bias=draw(st.booleans()))
        )
        modules += [activation() for activation in draw(st.lists(st.sampled_from(ACTIVATIONS), max_size=1))]
        channels, size = out_channels, (size + 2 * padding - reach) // stride + 1
        pool = draw(st.sampled_from([None, nn.MaxPool2d, nn.AvgPool2d]))
        if pool is not None and size >= 2:
            pool_stride, pool_padding = draw(st.integers(1, 2)), draw(st.integers(0, 1))
            modules.append(pool(2, pool_stride, pool_padding))
            size = (size + 2 * pool_padding - 2) // pool_stride + 1
    return modules, input_shape, channels * size * size


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stack=_convolution_stacks(), selection=st.lists(st.booleans(), min_size=6, max_size=6))
def test_random_convolution_chains(stack, selection, unchecked):
    """Strides, padding, dilation, kernels and pooling at random: the chain's Hessian and the
    layer factors' GGN (forced) equal the dense references, also for parameter subsets."""
    from curvkit import GGNLinearOperator
    from curvkit.operators._layer_factors import LayerFactorization

    modules, input_shape, features = stack
    torch.manual_seed(features)
    model = nn.Sequential(*modules, nn.Flatten(), nn.Linear(features, 3))
    model, loss_func, data = _problem(model, num_inputs=input_shape)
    every = list(model.parameters())
    params = [tensor for tensor, chosen in zip(every, selection) if chosen] or every[:1]
    hessian = _hessian(model, loss_func, params, data).to_dense()
    _assert_matches(hessian, reference.hessian_matrix(model, loss_func, params, data))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LayerFactorization, "worth_it", lambda self, num_columns: True)
        ggn = GGNLinearOperator(model, loss_func, params, data)
        dense = ggn.to_dense()
        assert ggn._layer_factorization.applicable
    _assert_matches(dense, reference.ggn_matrix(model, loss_func, params, data))


def _pooled(kind: str) -> tuple[nn.Module, tuple[int, ...]]:
    """Chains with pooling: after or before an activation, overlapping windows, padding, 1-3d."""
    if kind == "lenet":
        model = nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(3, 4, 3), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 3),
        )  # fmt: skip
        return model, (1, 8, 8)
    if kind == "pool-then-activation":  # a curvature after the pooling, overlapping max windows
        model = nn.Sequential(
            nn.Conv2d(2, 3, 2), nn.MaxPool2d(3, stride=1, padding=1), nn.Sigmoid(),
            nn.AvgPool2d(3, stride=2, padding=1), nn.Softplus(), nn.Flatten(), nn.Linear(27, 3),
        )  # fmt: skip
        return model, (2, 6, 6)
    if kind == "conv1d":
        model = nn.Sequential(
            nn.Conv1d(2, 3, 3),
            nn.GELU(),
            nn.MaxPool1d(2, stride=2, dilation=2),
            nn.Flatten(),
            nn.Linear(9, 3),
        )
        return model, (2, 9)
    # an odd size the pooling leaves a row of: its transpose needs output padding
    model = nn.Sequential(nn.Conv3d(1, 2, 2), nn.ELU(), nn.AvgPool3d(2), nn.Flatten(), nn.Linear(2, 3))
    return model, (1, 4, 4, 4)


@pytest.mark.parametrize("selection", ["all", "first-layer"])
@pytest.mark.parametrize("kind", ["lenet", "pool-then-activation", "conv1d", "conv3d"])
def test_pooling(kind, selection, unchecked):
    """Max pooling selects the forward pass's maxima, average pooling is a uniform depthwise
    convolution: tangents go through them, cotangents through their transposes."""
    torch.manual_seed(3)
    model, input_shape = _pooled(kind)
    model, loss_func, data = _problem(model, num_inputs=input_shape)
    params = list(model.parameters()) if selection == "all" else list(model[0].parameters())
    operator = _hessian(model, loss_func, params, data)
    assert any(layer.activation for layer in operator._layer_chain.layers)
    _assert_matches(operator.to_dense(), reference.hessian_matrix(model, loss_func, params, data))


@pytest.mark.parametrize(
    "pool",
    [
        nn.MaxPool2d(2, ceil_mode=True),
        nn.MaxPool2d(2, return_indices=True),
        nn.AvgPool2d(3, padding=1, count_include_pad=False),
        nn.AvgPool2d(2, divisor_override=3),
        nn.AdaptiveAvgPool2d(1),
    ],
    ids=["ceil-mode", "return-indices", "exclude-padding", "divisor", "adaptive"],
)
def test_pooling_that_is_no_chain(pool):
    """Pooling whose windows are not all one uniform linear map keeps the general path."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), pool, nn.Flatten(), nn.LazyLinear(3))
    model(torch.randn(1, 1, 8, 8)) if not getattr(pool, "return_indices", False) else None
    assert LayerChain.of(model, layer_map(model, [model[0].weight]), 1) is None


def test_a_convolution_bias_whose_output_has_one_position(unchecked):
    """Found by the random stacks: a bias tangent broadcast over a single position is a view of
    the bias (reshaping it copies nothing), and the next layer's tangent is summed into it."""
    model = nn.Sequential(
        nn.Conv2d(1, 1, 1, stride=2), nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2, 3)
    )
    model, loss_func, data = _problem(model, num_inputs=(1, 2, 2))
    params = [model[0].bias, model[1].weight]
    _assert_matches(
        _hessian(model, loss_func, params, data).to_dense(),
        reference.hessian_matrix(model, loss_func, params, data),
    )


def test_a_chain_linearized_without_slopes_pulls_nothing_back():
    """KFAC's 'forward-only' pass takes the layer inputs only; pulling columns back would be wrong."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    chain = LayerChain.of(model, layer_map(model, list(model.parameters())), 4)
    batch = Batch(0, torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64), 5, 5)
    linearization = chain.linearize(batch, nn.MSELoss(), gradients=False, slopes=False)
    with_slopes = chain.linearize(batch, nn.MSELoss(), gradients=False)
    for inputs, expected in zip(linearization.inputs, with_slopes.inputs):
        torch.testing.assert_close(inputs, expected, rtol=0, atol=0)
    torch.testing.assert_close(linearization.output, model(batch.X), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="without slopes"):
        linearization.output_gradients(torch.ones(1, 5, 2, dtype=torch.float64))
