"""``Jᵀ Λ J`` through linear-layer factors: used where it applies, equal to the references, and
left for the general path where samples are coupled."""

import pytest
import torch
from torch import nn
from zoo import make_problem, make_problem_from_id

from curvkit import EFLinearOperator, FisherMCLinearOperator, GGNLinearOperator, reference
from curvkit._layers.parameters import layer_map
from curvkit.operators._layer_factors import LayerFactorization

OPERATORS = {"ggn": GGNLinearOperator, "ef": EFLinearOperator, "fisher_mc": FisherMCLinearOperator}
REFERENCES = {
    "ggn": reference.ggn_matrix,
    "ef": reference.empirical_fisher_matrix,
    "fisher_mc": reference.fisher_mc_matrix,
}


def _dense(operator, cached: bool) -> torch.Tensor:
    dense = operator.to_dense()
    return operator.to_dense() if cached else dense  # the second pass: from the cached factors


@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
@pytest.mark.parametrize("kind", sorted(OPERATORS))
@pytest.mark.parametrize(
    "problem_id",
    [
        "mlp-ce-mean-three-list",
        "mlp-mse-sum-one-dict",
        "mlp-bce-sum-three-subset",
        "mlp-ce-mean-three-list-f32",
        "cnn-ce-mean-three-list",
        "cnn-mse-sum-one-dict",
        "cnn-bce-mean-three-subset",
    ],
)
def test_factored_products_match_the_reference(problem_id, kind, cached, reference_of, monkeypatch):
    """Every parameter of the zoo's MLP sits in an ``nn.Linear``, the CNN's in a convolution or a
    linear layer: ``to_dense`` goes through the factors (and their check against the general path
    passes), biases and subsets included."""
    problem = make_problem_from_id(problem_id)
    if problem_id.startswith("cnn"):  # whose layers are too small for factors to pay
        monkeypatch.setattr(LayerFactorization, "worth_it", lambda self, num_columns: True)
    operator = OPERATORS[kind](
        problem.model, problem.loss_func, problem.params, problem.data, cache_batches=cached
    )
    dense = _dense(operator, cached)
    factorization = operator._layer_factorization
    assert factorization.applicable and factorization.check.verified_modes is not None
    if cached:
        assert any(key == "layer factors" for _, key in operator._setup.cache.entries)
    expected = reference_of(problem.name, kind)
    scale = expected.detach().abs().max()
    rtol, atol = (1e-7, 1e-10) if problem.dtype == torch.float64 else (1e-4, 1e-5)
    torch.testing.assert_close(dense.to(expected), expected, rtol=rtol, atol=atol * float(scale))


def test_single_vectors_and_few_columns_keep_the_general_path():
    """``K (B + 2 k Σ out) < 2 k B`` decides: the GGN of the MLP (3 classes: K = 2 columns of
    cross-entropy's Hessian root) factors many columns, not 2; single vectors never."""
    problem = make_problem("mlp", "ce", "mean")
    operator = GGNLinearOperator(problem.model, problem.loss_func, problem.params, problem.data)
    factorization = operator._layer_factorization
    assert factorization.factor_rank == 2
    assert factorization.sizes is not None  # learned while the probe multiplied two columns
    assert not factorization.worth_it(2) and factorization.worth_it(operator.shape[0])
    assert factorization.check.verified_modes is None  # nothing went through the factors yet
    operator @ torch.randn(operator.shape[0], 1, dtype=torch.float64)
    assert factorization.check.verified_modes is None


class CenteredFeatures(nn.Module):
    """Subtracts the batch mean of the hidden features, always or in train mode only."""

    def __init__(self, always: bool):
        super().__init__()
        self.always = always
        self.first, self.second, self.third = nn.Linear(4, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        hidden = torch.tanh(self.second(torch.tanh(self.first(x))))
        if self.always or self.training:  # the samples are coupled
            hidden = hidden - hidden.mean(0, keepdim=True)
        return self.third(hidden)


def _coupled_problem(always: bool):
    torch.manual_seed(0)
    model = CenteredFeatures(always).double().eval()
    X = torch.randn(7, 4, dtype=torch.float64)
    return model, nn.CrossEntropyLoss(), list(model.parameters()), [(X, torch.randint(0, 3, (7,)))]


def _assert_matches(dense, expected):
    torch.testing.assert_close(dense, expected.detach(), rtol=1e-7, atol=1e-10 * float(expected.abs().max()))


@pytest.mark.parametrize("kind", sorted(OPERATORS))
def test_coupled_samples_fall_back_to_the_general_path(kind):
    """Factors assume per-sample Jacobians; the check of the first factored product catches a
    model that couples samples, and the operator stays on the general path (exact)."""
    model, loss_func, params, data = _coupled_problem(always=True)
    operator = OPERATORS[kind](model, loss_func, params, data)
    dense = operator.to_dense()
    assert operator._layer_factorization.check.failed
    _assert_matches(dense, REFERENCES[kind](model, loss_func, params, data))


def test_switching_to_train_mode_checks_the_factors_again():
    """A model that couples the samples in train mode only: the factors agree in eval mode, and
    the switch to train mode makes the operator check again, and fall back."""
    model, loss_func, params, data = _coupled_problem(always=False)
    operator = EFLinearOperator(model, loss_func, params, data, check_deterministic=False)
    operator.to_dense()
    assert operator._layer_factorization.check.verified_modes is not None
    model.train()
    dense = operator.to_dense()
    assert operator._layer_factorization.check.failed
    _assert_matches(dense, reference.empirical_fisher_matrix(model, loss_func, params, data))


def test_models_with_other_parameters_keep_the_general_path():
    """BatchNorm's parameters do not factor: the operator never records layers."""
    problem = make_problem("resnet", "ce", "mean")
    operator = GGNLinearOperator(problem.model, problem.loss_func, problem.params, problem.data)
    operator.to_dense()
    assert not operator._layer_factorization.applicable
    assert operator._layer_factorization.sizes is None


def _convolutional(kind: str) -> tuple[nn.Module, tuple[int, ...]]:
    if kind == "conv1d":
        convolution = nn.Conv1d(2, 4, 3, stride=2, padding=1)
        return nn.Sequential(convolution, nn.ReLU(), nn.Flatten(), nn.Linear(12, 3)), (2, 6)
    if kind == "conv3d":
        model = nn.Sequential(nn.Conv3d(1, 2, 2, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(54, 3))
        return model, (1, 2, 2, 2)
    model = nn.Sequential(  # a kernel without bias, dilation, a 1×1 convolution
        nn.Conv2d(2, 3, 3, dilation=2, bias=False),
        nn.Sigmoid(),
        nn.Conv2d(3, 2, 1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    return model, (2, 6, 6)


@pytest.mark.parametrize("selection", ["all", "bias-of-a-convolution"])
@pytest.mark.parametrize("kind", ["conv1d", "conv2d", "conv3d"])
def test_convolutions_factor_position_by_position(kind, selection, monkeypatch):
    """Each convolution's columns are one convolution with stacked kernels, its weight products
    one weight gradient: equal to the reference for strides, padding, dilation, 1-3 dimensions,
    and for a convolution's bias alone."""
    monkeypatch.setattr(LayerFactorization, "worth_it", lambda self, num_columns: True)
    torch.manual_seed(0)
    model, input_shape = _convolutional(kind)
    model = model.double().eval()
    inputs = [torch.randn(size, *input_shape, dtype=torch.float64) for size in (4, 3)]
    data = [(X, torch.randint(0, 3, (X.shape[0],))) for X in inputs]
    params = list(model.parameters())
    if selection != "all":
        convolutions = [module for module in model if isinstance(module, nn.modules.conv._ConvNd)]
        params = [module.bias for module in convolutions if module.bias is not None] + [model[-1].weight]
    loss_func = nn.CrossEntropyLoss()
    operator = GGNLinearOperator(model, loss_func, params, data)
    dense = operator.to_dense()
    assert operator._layer_factorization.check.verified_modes is not None
    _assert_matches(dense, reference.ggn_matrix(model, loss_func, params, data))


@pytest.mark.parametrize(
    "convolution",
    [
        nn.Conv2d(2, 4, 3, groups=2),
        nn.Conv2d(2, 4, 3, padding="same"),
        nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"),
        nn.ConvTranspose2d(2, 4, 3),
    ],
    ids=["groups", "padding-same", "padding-mode", "transposed"],
)
def test_convolutions_that_do_not_factor(convolution):
    """Groups would mix the stacked columns' channels; other padding is not that of the weight
    gradient; transposed convolutions are other layers."""
    model = nn.Sequential(convolution, nn.Flatten(), nn.LazyLinear(3))
    model(torch.randn(1, 2, 6, 6))
    params = list(model.parameters())
    found = layer_map(model, params)
    assert [layer.module for layer in found.layers] == [model[-1]]
    assert sorted(found.unsupported) == [0, 1]  # the convolution's weight and bias, with why
