"""KFACLinearOperator against dense ground truth: where KFAC is exact, and its defining formulas."""

import pytest
import torch
from contract import LinearOperatorContract
from kfac_formulas import concatenated, layer_block, output_columns
from kfac_problems import (
    F64,
    block,
    classification_data,
    conv_problem,
    deep_linear,
    language_problem,
    mlp_classifier,
    offsets,
    regression_data,
    sequence_problem,
)
from torch import nn

from curvkit import FisherType, KFACLinearOperator, KFACType
from curvkit._layers import convolution, segments
from curvkit.operators import _gram_sums as gram_sums
from curvkit.operators import _kfac_factors as kfac_factors
from curvkit.operators import _recorded_pass as recorded_pass
from curvkit.reference import empirical_fisher_matrix, ggn_matrix


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


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_gram_matrices_in_strips_give_the_ggn_blocks_exactly_symmetric(approx, monkeypatch):
    """Wide factors are summed in strips of their lower triangle, then mirrored: still the GGN's blocks."""
    monkeypatch.setattr(gram_sums, "GRAM_STRIP", 2)  # factors of 4 to 6 rows: strips of 2 and 1
    model, loss_func = deep_linear(), nn.MSELoss()
    data, params = regression_data((3, 5, 2)), list(model.parameters())
    kfac = KFACLinearOperator(
        model,
        loss_func,
        params,
        data,
        fisher_type="type-2",
        kfac_approx=approx,
        separate_weight_and_bias=False,
    )
    ggn, dense = ggn_matrix(model, loss_func, params, data), kfac.to_dense()
    for first, last in [(0, 1), (2, 3), (4, 5)]:
        expected = block(ggn, params, first, last)
        torch.testing.assert_close(block(dense, params, first, last), expected, rtol=1e-10, atol=1e-12)
    factors = [f for b in kfac.factored.blocks for f in (b.output_factor, b.input_factor) if f is not None]
    assert all(torch.equal(factor, factor.T) for factor in factors)
    assert any(factor.shape[0] >= 4 for factor in factors)  # some were summed in strips


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


@pytest.mark.parametrize("patches", ["unfolded", "channels_last"])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("dims", [1, 2])
def test_convolutions_follow_expand_and_reduce(approx, dims, patches, monkeypatch):
    """Either way of copying the patches (channels-last from 16 input channels; here from 1)."""
    if patches == "channels_last":
        monkeypatch.setattr(convolution, "CHANNELS_LAST_MIN", 1)
        monkeypatch.setattr(convolution, "CHANNELS_LAST_ROWS", 0.0)
    model, loss_func, data = conv_problem(dims)
    params = list(model.parameters())
    kwargs = {"fisher_type": "type-2", "kfac_approx": approx}
    dense = KFACLinearOperator(model, loss_func, params, data, **kwargs).to_dense()
    torch.testing.assert_close(
        block(dense, params, 0),
        layer_block(model, loss_func, data, model[0], "type-2", approx),
        rtol=1e-9,
        atol=1e-12,
    )
    bias = layer_block(model, loss_func, data, model[0], "type-2", approx, bias=True)
    torch.testing.assert_close(block(dense, params, 1), bias, rtol=1e-9, atol=1e-12)
    joined = KFACLinearOperator(
        model, loss_func, params, data, **kwargs, separate_weight_and_bias=False
    ).to_dense()
    expected = layer_block(model, loss_func, data, model[0], "type-2", approx, joined=True)
    torch.testing.assert_close(block(joined, params, 0, 1), expected, rtol=1e-9, atol=1e-12)


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


@pytest.mark.parametrize("fisher_type", ["type-2", "forward-only"])
def test_a_separate_bias_keeps_its_weights_output_factor_not_a_copy(fisher_type, tmp_path):
    """Both blocks hold one tensor (curvlinops too): a copy took 13 % more memory on the MLP of the
    benchmark; saved, and loaded into another operator, they still share it. 'forward-only': the
    same identity."""
    model, loss_func = mlp_classifier(), nn.CrossEntropyLoss()
    data, params = classification_data((3, 5)), list(model.parameters())
    kfac = KFACLinearOperator(model, loss_func, params, data, fisher_type=fisher_type)
    torch.save(kfac.state_dict(), tmp_path / "kfac.pt")
    loaded = KFACLinearOperator(model, loss_func, params, data, fisher_type=fisher_type)
    loaded.load_state_dict(torch.load(tmp_path / "kfac.pt"))  # its factors copied: once each
    for state in (kfac.state_dict(), torch.load(tmp_path / "kfac.pt"), loaded.state_dict()):
        blocks = state["factors"]["blocks"]
        weights = [block for block in blocks if block["input_factor"] is not None]
        biases = [block for block in blocks if block["input_factor"] is None]
        assert len(weights) == len(biases) == 3
        for weight, bias in zip(weights, biases):
            assert bias["output_factor"].data_ptr() == weight["output_factor"].data_ptr()


def test_a_shared_output_factor_is_eigendecomposed_once(monkeypatch):
    """EKFAC's basis: a separate bias's output eigenvectors are its weight's, decomposed once."""
    decomposed, original = [], torch.linalg.eigh

    def eigh(factor):
        decomposed.append(factor.shape)
        return original(factor)

    model, loss_func = mlp_classifier(), nn.CrossEntropyLoss()
    data, params = classification_data((3, 5)), list(model.parameters())
    kfac = KFACLinearOperator(model, loss_func, params, data, fisher_type="type-2")
    kfac.compute_kronecker_factors()
    monkeypatch.setattr(torch.linalg, "eigh", eigh)
    blocks = kfac.factored.eigendecomposed().blocks
    assert len(decomposed) == 6  # three layers' G and A; the biases' G are their weights'
    for weight, bias in zip(blocks[::2], blocks[1::2]):
        assert bias.input_eigenvectors is None
        assert bias.output_eigenvectors.data_ptr() == weight.output_eigenvectors.data_ptr()
    torch.testing.assert_close(kfac.factored.eigendecomposed().to_dense(), kfac.to_dense())


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


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("dims", [1, 2])
def test_chunks_of_samples_give_the_same_factors(approx, dims, monkeypatch):
    """Patches and per-sample Gram products formed a few samples at a time add up to the whole."""
    model, loss_func, data = conv_problem(dims)
    params = list(model.parameters())

    def dense():
        return KFACLinearOperator(
            model, loss_func, params, data, fisher_type="type-2", kfac_approx=approx
        ).to_dense()

    whole = dense()
    monkeypatch.setattr(kfac_factors, "PATCH_ENTRIES", 1)
    monkeypatch.setattr(gram_sums, "PER_SAMPLE_ENTRIES", 1)
    torch.testing.assert_close(dense(), whole, rtol=1e-12, atol=1e-14)


BUFFER_PROBLEMS = {
    "mlp": lambda: (mlp_classifier(), nn.CrossEntropyLoss(), classification_data((3, 2, 4))),
    "sequence": lambda: sequence_problem("ce"),
    "conv2d": lambda: conv_problem(2),
    "tied language model": lambda: language_problem(tied=True),
}


@pytest.mark.parametrize("fisher_type", ["type-2", "mc", "empirical"])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("problem", sorted(BUFFER_PROBLEMS))
@pytest.mark.parametrize("gram_rows", [5, 64])
def test_rows_held_back_give_the_same_factors(gram_rows, problem, approx, fisher_type, monkeypatch):
    """Gram rows held across batches (here every side's, added every ``gram_rows`` rows and at
    the end; with 64 the buffers grow, keeping the rows they hold)."""
    model, loss_func, data = BUFFER_PROBLEMS[problem]()
    params = list(model.parameters())
    loss_average = "batch" if problem in ("mlp", "conv2d") else "batch+sequence"
    kwargs = {"fisher_type": fisher_type, "kfac_approx": approx, "seed": 3, "loss_average": loss_average}

    def dense():
        return KFACLinearOperator(model, loss_func, params, data, **kwargs).to_dense()

    monkeypatch.setattr(gram_sums, "BUFFERED_FEATURES", 10**9)  # none held
    direct = dense()
    monkeypatch.setattr(gram_sums, "BUFFERED_FEATURES", 1)
    monkeypatch.setattr(gram_sums, "GRAM_ROWS", gram_rows)
    torch.testing.assert_close(dense(), direct, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("joined", [False, True], ids=["separate", "joined"])
@pytest.mark.parametrize("first_batch", ["channels_last", "unfolded"])
def test_the_first_batch_chooses_the_patches_for_all(first_batch, joined, monkeypatch):
    """Batches of 3 and 2 samples give 27 and 18 patch rows of 18 features; from 1.2 rows per
    feature only the 3 samples take channels-last patches. The first batch's choice holds for the
    whole pass (a side sums rows in one order), either way round: the factors are the same."""
    model, loss_func, data = conv_problem(2)
    data = data if first_batch == "channels_last" else data[::-1]
    params = list(model.parameters())
    kwargs = {"fisher_type": "type-2", "separate_weight_and_bias": not joined}

    def dense():
        return KFACLinearOperator(model, loss_func, params, data, **kwargs).to_dense()

    monkeypatch.setattr(convolution, "CHANNELS_LAST_MIN", 10**9)
    unfolded = dense()
    monkeypatch.setattr(convolution, "CHANNELS_LAST_MIN", 1)
    monkeypatch.setattr(convolution, "CHANNELS_LAST_ROWS", 1.2)
    grids = []
    monkeypatch.setattr(
        convolution.ConvolutionRule, "gram_rows", _recorded(convolution.ConvolutionRule.gram_rows, grids)
    )
    torch.testing.assert_close(dense(), unfolded, rtol=1e-12, atol=1e-14)
    assert len(grids) == (2 if first_batch == "channels_last" else 0)


def _recorded(method, calls: list):
    def recorded(module, inputs):
        calls.append(inputs.shape[0])
        return method(module, inputs)

    return recorded


@pytest.mark.parametrize("patches", ["unfolded", "channels_last"])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_conv3d_of_depth_one_is_the_conv2d(approx, patches, monkeypatch):
    """A ``Conv3d`` with kernel ``(1, 3, 3)`` on inputs of depth 1 is a ``Conv2d``: the same factors."""
    if patches == "channels_last":
        monkeypatch.setattr(convolution, "CHANNELS_LAST_MIN", 1)
        monkeypatch.setattr(convolution, "CHANNELS_LAST_ROWS", 0.0)
    model2d, loss_func, data = conv_problem(2)  # Conv2d(2, 3, 3, stride=2, padding=1) first
    deep = nn.Conv3d(2, 3, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)).double()
    with torch.no_grad():
        deep.weight.copy_(model2d[0].weight.unsqueeze(2))
        deep.bias.copy_(model2d[0].bias)
    model3d = nn.Sequential(deep, nn.ReLU(), nn.Flatten(), model2d[3])
    data3d = [(X.unsqueeze(2), y) for X, y in data]
    kwargs = {"fisher_type": "type-2", "kfac_approx": approx}
    expected = KFACLinearOperator(model2d, loss_func, list(model2d.parameters()), data, **kwargs).to_dense()
    actual = KFACLinearOperator(model3d, loss_func, list(model3d.parameters()), data3d, **kwargs).to_dense()
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-13)


class _NotAChain(nn.Sequential):
    """The same modules, but not an ``nn.Sequential`` itself: the factor pass records it with hooks."""


@pytest.mark.parametrize("fisher_type", ["type-2", "mc", "empirical", "forward-only"])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("problem", ["mlp", "conv1d", "conv2d"])
def test_chain_pass_gives_the_recorded_pass_factors(problem, approx, fisher_type, monkeypatch):
    """A layer chain's pass (forward without a graph, columns pulled back by hand) matches the hooks'."""
    if problem == "mlp":
        model, loss_func, data = mlp_classifier(), nn.CrossEntropyLoss(), classification_data((3, 2))
    else:
        model, loss_func, data = conv_problem(int(problem[-2]))
    chain_batches = []
    original = recorded_pass._chain_chunks
    counted = lambda *args: chain_batches.append(1) or original(*args)  # noqa: E731
    monkeypatch.setattr(recorded_pass, "_chain_chunks", counted)
    kwargs = {"fisher_type": fisher_type, "kfac_approx": approx, "seed": 5}
    params = list(model.parameters())
    chained = KFACLinearOperator(model, loss_func, params, data, **kwargs).to_dense()
    assert len(chain_batches) == len(data)
    recorded = KFACLinearOperator(_NotAChain(*model), loss_func, params, data, **kwargs).to_dense()
    assert len(chain_batches) == len(data)
    torch.testing.assert_close(chained, recorded, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fisher_type, derivatives", [("forward-only", 0), ("mc", 2)])
def test_forward_only_forms_no_activation_derivatives_on_a_chain(fisher_type, derivatives, monkeypatch):
    """'forward-only' needs the layer inputs only: no activation's slope (a Tanh's is an autograd pass)."""
    model, loss_func, data = mlp_classifier(), nn.CrossEntropyLoss(), classification_data((3,))
    calls = []
    original = segments._elementwise_derivatives
    counted = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)  # noqa: E731
    monkeypatch.setattr(segments, "_elementwise_derivatives", counted)
    KFACLinearOperator(
        model, loss_func, list(model.parameters()), data, fisher_type=fisher_type
    ).compute_kronecker_factors()
    assert len(calls) == derivatives  # the Tanh and the ReLU, once per batch


@pytest.mark.parametrize(
    ("operator", "options"),
    [
        ("KFAC", {"damping": (1e-2, 1e-3)}),
        ("KFAC", {"damping": 1e-2, "use_heuristic_damping": True}),
        ("EKFAC", {"damping": 1e-2, "use_exact_damping": True}),
    ],
)
def test_the_inverse_is_saved_with_its_kfac_and_options_and_loaded_without_a_pass(
    operator, options, tmp_path
):
    """curvlinops' ``KFACInverseLinearOperator.state_dict`` / ``from_state_dict(state, A)``."""
    from curvkit import EKFACLinearOperator, KFACInverseLinearOperator

    cls = {"KFAC": KFACLinearOperator, "EKFAC": EKFACLinearOperator}[operator]
    model, loss_func = mlp_classifier(), nn.CrossEntropyLoss()
    data, params = classification_data((3, 5)), list(model.parameters())
    inverse = KFACInverseLinearOperator(cls(model, loss_func, params, data, fisher_type="type-2"), **options)
    torch.save(inverse.state_dict(), tmp_path / "inverse.pt")
    forwards = []
    hook = model.register_forward_hook(lambda *args: forwards.append(1))
    fresh = cls(model, loss_func, params, data, fisher_type="type-2", check_deterministic=False)
    loaded = KFACInverseLinearOperator.from_state_dict(torch.load(tmp_path / "inverse.pt"), fresh)
    torch.testing.assert_close(loaded.to_dense(), inverse.to_dense(), rtol=0, atol=0)
    hook.remove()
    assert not forwards  # the factors came from the state dict
    assert {key: loaded.state_dict()[key] for key in options} == options
    # an existing inverse takes another one's options and factors
    other = KFACInverseLinearOperator(fresh, damping=1.0, use_exact_damping=operator == "EKFAC")
    other.load_state_dict(inverse.state_dict())
    torch.testing.assert_close(other.to_dense(), inverse.to_dense(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="state_dict must be a KFACInverseLinearOperator's"):
        KFACInverseLinearOperator.from_state_dict(fresh.state_dict(), fresh)
