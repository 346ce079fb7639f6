"""KFACLinearOperator against dense ground truth: where KFAC is exact, and its defining formulas."""

import itertools

import pytest
import torch
from contract import LinearOperatorContract
from kfac_formulas import concatenated, layer_block, output_columns
from torch import nn

from curvkit import FisherType, KFACLinearOperator, KFACType
from curvkit.reference import empirical_fisher_matrix, ggn_matrix

F64 = torch.float64


def batches(sizes, make_x, make_y, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(make_x(n, generator), make_y(n, generator)) for n in sizes]


def offsets(params):
    ends = list(itertools.accumulate(p.numel() for p in params))
    return [slice(end - p.numel(), end) for p, end in zip(params, ends)]


def block(matrix, params, first, last=None):
    spans = offsets(params)
    return matrix[spans[first].start : spans[last if last is not None else first].stop][
        :, spans[first].start : spans[last if last is not None else first].stop
    ]


def deep_linear(dtype=F64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3), nn.Linear(3, 2)).to(dtype)


def regression_data(sizes, dtype=F64, inputs=4, outputs=2):
    data = batches(
        sizes,
        lambda n, g: torch.randn(n, inputs, generator=g, dtype=F64),
        lambda n, g: torch.randn(n, outputs, generator=g, dtype=F64),
    )
    return [(X.to(dtype), y.to(dtype)) for X, y in data]


@pytest.mark.parametrize("sizes", [(1,), (1, 1, 1), (3, 5, 2)], ids=["one", "single-datum-batches", "three"])
@pytest.mark.parametrize("separate", [True, False], ids=["separate", "joined"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_type2_on_a_deep_linear_network_is_the_ggn_block_diagonal(sizes, separate, reduction):
    model, loss_func = deep_linear(), nn.MSELoss(reduction=reduction)
    data, params = regression_data(sizes), list(model.parameters())
    kfac = KFACLinearOperator(
        model,
        loss_func,
        params,
        data,
        fisher_type="type-2",
        separate_weight_and_bias=separate,
        loss_average=None if reduction == "sum" else "batch",
    )
    ggn, dense = ggn_matrix(model, loss_func, params, data), kfac.to_dense()
    groups = [(i,) for i in range(len(params))] if separate else [(0, 1), (2, 3), (4, 5)]
    for group in groups:
        torch.testing.assert_close(
            block(dense, params, group[0], group[-1]),
            block(ggn, params, group[0], group[-1]),
            rtol=1e-10,
            atol=1e-12,
        )
    mask = torch.block_diag(*[torch.ones(block(ggn, params, g[0], g[-1]).shape, dtype=F64) for g in groups])
    assert (dense * (1 - mask)).abs().max() == 0


def mlp_classifier(dtype=F64):
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).to(dtype)


def classification_data(sizes, dtype=F64):
    return batches(
        sizes,
        lambda n, g: torch.randn(n, 4, generator=g, dtype=dtype),
        lambda n, g: torch.randint(0, 3, (n,), generator=g),
    )


@pytest.mark.parametrize(
    "fisher_type, reference", [("type-2", ggn_matrix), ("empirical", empirical_fisher_matrix)]
)
def test_bias_blocks_are_exact_and_weight_blocks_the_kronecker_formula(fisher_type, reference):
    """A bias alone has the per-sample gradient covariance itself as its block (no Kronecker step)."""
    model, loss_func = mlp_classifier(), nn.CrossEntropyLoss()
    data, params = classification_data((3, 5, 2)), list(model.parameters())
    kfac = KFACLinearOperator(model, loss_func, params, data, fisher_type=fisher_type)
    exact, dense = reference(model, loss_func, params, data), kfac.to_dense()
    for index in (1, 3, 5):
        torch.testing.assert_close(
            block(dense, params, index), block(exact, params, index), rtol=1e-10, atol=1e-12
        )
    for index, module in zip((0, 2, 4), (model[0], model[2], model[4])):
        expected = layer_block(model, loss_func, data, module, fisher_type, "expand")
        torch.testing.assert_close(block(dense, params, index), expected, rtol=1e-10, atol=1e-12)


class SequenceModel(nn.Module):
    """Linear layers on ``[N, T, in]``, a layer used twice; output ``[N, C, T]`` for cross-entropy."""

    def __init__(self, cross_entropy: bool):
        super().__init__()
        self.first, self.shared, self.head = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 3)
        self.cross_entropy = cross_entropy

    def forward(self, x):
        hidden = self.shared(torch.tanh(self.shared(torch.tanh(self.first(x)))))
        output = self.head(torch.tanh(hidden))
        return output.transpose(1, 2) if self.cross_entropy else output


def sequence_problem(loss: str):
    torch.manual_seed(2)
    model = SequenceModel(loss == "ce").double()
    make_y = {
        "ce": lambda n, g: torch.randint(0, 3, (n, 5), generator=g),
        "mse": lambda n, g: torch.randn(n, 5, 3, generator=g, dtype=F64),
    }[loss]
    data = batches((2, 3), lambda n, g: torch.randn(n, 5, 3, generator=g, dtype=F64), make_y)
    return model, nn.CrossEntropyLoss() if loss == "ce" else nn.MSELoss(), data


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("fisher_type", ["type-2", "empirical"])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_sequences_and_a_layer_used_twice_follow_expand_and_reduce(approx, fisher_type, loss):
    model, loss_func, data = sequence_problem(loss)
    params = list(model.parameters())
    kfac = KFACLinearOperator(
        model,
        loss_func,
        params,
        data,
        fisher_type=fisher_type,
        kfac_approx=approx,
        loss_average="batch+sequence",
        separate_weight_and_bias=False,
    )
    dense = kfac.to_dense()
    for first, module in zip((0, 2, 4), (model.first, model.shared, model.head)):
        expected = layer_block(model, loss_func, data, module, fisher_type, approx, joined=True)
        torch.testing.assert_close(block(dense, params, first, first + 1), expected, rtol=1e-9, atol=1e-12)


def conv_problem(dims: int):
    torch.manual_seed(3)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1) if dims == 2 else nn.Conv1d(2, 3, 3, padding=2, dilation=2)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)).double()
    shape = (2, 6, 5) if dims == 2 else (2, 7)
    model(torch.zeros(1, *shape, dtype=F64))
    data = batches(
        (3, 2),
        lambda n, g: torch.randn(n, *shape, generator=g, dtype=F64),
        lambda n, g: torch.randint(0, 3, (n,), generator=g),
    )
    return model, nn.CrossEntropyLoss(), data


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("dims", [1, 2])
def test_convolutions_follow_expand_and_reduce(approx, dims):
    model, loss_func, data = conv_problem(dims)
    params = list(model.parameters())
    kfac = KFACLinearOperator(model, loss_func, params, data, fisher_type="type-2", kfac_approx=approx)
    dense = kfac.to_dense()
    torch.testing.assert_close(
        block(dense, params, 0),
        layer_block(model, loss_func, data, model[0], "type-2", approx),
        rtol=1e-9,
        atol=1e-12,
    )
    bias = layer_block(model, loss_func, data, model[0], "type-2", approx, bias=True)
    torch.testing.assert_close(block(dense, params, 1), bias, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("sizes", [(10,), (3, 5, 2)], ids=["one", "three"])
def test_mc_converges_to_type2(sizes):
    model, loss_func = mlp_classifier(), nn.CrossEntropyLoss()
    data, params = classification_data(sizes), list(model.parameters())
    exact = KFACLinearOperator(model, loss_func, params, data, fisher_type="type-2").to_dense()

    def error(samples):
        mc = KFACLinearOperator(
            model,
            loss_func,
            params,
            data,
            fisher_type=FisherType.MC,
            mc_samples=samples,
            check_deterministic=False,
        )
        return ((mc.to_dense() - exact).norm() / exact.norm()).item()

    few, many = error(1), error(3000)
    assert many < 0.06 and many < few / 4


def test_forward_only_has_identity_output_factors():
    model, loss_func = mlp_classifier(), nn.CrossEntropyLoss()
    data, params = classification_data((3, 5)), list(model.parameters())
    kfac = KFACLinearOperator(model, loss_func, params, data, fisher_type="forward-only")
    X, _ = concatenated(data)
    dense = kfac.to_dense()
    torch.testing.assert_close(block(dense, params, 0), torch.kron(torch.eye(6, dtype=F64), X.T @ X / len(X)))
    torch.testing.assert_close(block(dense, params, 5), torch.eye(3, dtype=F64))


def test_enums_and_strings_give_the_same_operator():
    model, loss_func = mlp_classifier(), nn.CrossEntropyLoss()
    data, params = classification_data((4,)), list(model.parameters())
    by_name = KFACLinearOperator(model, loss_func, params, data, fisher_type="type-2", kfac_approx="reduce")
    by_enum = KFACLinearOperator(
        model, loss_func, params, data, fisher_type=FisherType.TYPE2, kfac_approx=KFACType.REDUCE
    )
    torch.testing.assert_close(by_name.to_dense(), by_enum.to_dense(), rtol=0, atol=0)


def test_output_columns_factor_the_loss_hessian():
    """The formulas' own ground truth: ``Σ_k s_k s_kᵀ`` is each sample's Hessian block."""
    output, y = torch.randn(3, 4, dtype=F64), torch.tensor([0, 3, 1])
    columns = output_columns(nn.CrossEntropyLoss(), output, y, "type-2")
    probabilities = output.softmax(1)
    for n in range(3):
        expected = (torch.diag(probabilities[n]) - torch.outer(probabilities[n], probabilities[n])) / 3
        torch.testing.assert_close(columns[:, n].T @ columns[:, n], expected)


class TestContract(LinearOperatorContract):
    """The deep linear network's type-2 KFAC, whose dense ground truth is the GGN's block diagonal."""

    @pytest.fixture(params=[F64, torch.float32], ids=["f64", "f32"])
    def operator(self, request):
        model, data = deep_linear(request.param), regression_data((3, 2), request.param)
        return KFACLinearOperator(model, nn.MSELoss(), list(model.parameters()), data, fisher_type="type-2")

    @pytest.fixture
    def dense(self):
        model, data = deep_linear(), regression_data((3, 2))
        params = list(model.parameters())
        ggn = ggn_matrix(model, nn.MSELoss(), params, data)
        spans = offsets(params)
        return ggn * torch.block_diag(
            *[torch.ones(s.stop - s.start, s.stop - s.start, dtype=F64) for s in spans]
        )
