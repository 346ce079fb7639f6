"""The exact GGN diagonal and its Monte-Carlo variant against the dense matrices."""

import importlib
from functools import partial

import pytest
import torch
from torch import nn
from zoo import make_problem_from_id

from curvkit import FisherMCLinearOperator, GGNLinearOperator
from curvkit._engine import MiniBatchEngine
from curvkit.operators.ggn_diagonal import GGNDiagonalLinearOperator, ggn_diagonal


def test_exact_diagonal_matches_reference(small_problem, reference_of):
    p = small_problem
    diagonal = ggn_diagonal(p.model, p.loss_func, p.params, p.data, batch_size_fn=p.batch_size_fn)
    expected = reference_of(p.name, "ggn").diagonal()
    torch.testing.assert_close(diagonal, expected, rtol=1e-9, atol=1e-12 * expected.abs().max().item())


def test_mc_diagonal_is_the_diagonal_of_the_mc_fisher_with_the_same_seed():
    p = make_problem_from_id("mlp-ce-mean-three-list")
    diagonal = ggn_diagonal(p.model, p.loss_func, p.params, p.data, mode="mc", mc_samples=3, seed=7)
    fisher = FisherMCLinearOperator(p.model, p.loss_func, p.params, p.data, mc_samples=3, seed=7)
    torch.testing.assert_close(diagonal, fisher.to_dense().diagonal(), rtol=1e-9, atol=1e-14)


def test_operator_form_and_errors():
    p = make_problem_from_id("cnn-ce-mean-one-dict")
    operator = GGNDiagonalLinearOperator(p.model, p.loss_func, p.params, p.data)
    assert operator.shape == (p.dim, p.dim) and operator.is_psd
    with pytest.raises(ValueError, match="mode must be 'exact' or 'mc'"):
        ggn_diagonal(p.model, p.loss_func, p.params, p.data, mode="approximate")
    with pytest.raises(NotImplementedError, match="loss_func must be one of"):
        ggn_diagonal(p.model, nn.L1Loss(), p.params, p.data)
    with pytest.raises(ValueError, match=r"must be an nn\.Module"):
        ggn_diagonal(lambda X: p.model(X), p.loss_func, p.params, p.data)


class _Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.GRU(3, 4, batch_first=True), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


SAMPLE_BY_SAMPLE = {
    # vmap cannot push single samples through nn.GRU
    "recurrent": (_Recurrent, (6, 3), 2),
    # torch 2.13's batching rule for PReLU's backward on convolution features, nested in two
    # vmaps (samples, columns), gives per-sample gradients several per cent off without failing;
    # the mixed-sum check catches it
    "wrong nested vmap": (
        lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.PReLU(), nn.Flatten(), nn.Linear(48, 3)),
        (2, 4, 4),
        3,
    ),
}


@pytest.mark.parametrize("case", sorted(SAMPLE_BY_SAMPLE))
@pytest.mark.parametrize("mode", ["exact", "mc"])
def test_models_vmap_fails_on_go_sample_by_sample(case, mode):
    """Where the nested vmap over samples fails or disagrees with a batched backward pass, the
    samples go one at a time, and the diagonal is still exact."""
    build, input_shape, num_classes = SAMPLE_BY_SAMPLE[case]
    torch.manual_seed(0)
    model = build().double()
    data = [
        (torch.randn(n, *input_shape, dtype=torch.float64), torch.randint(0, num_classes, (n,)))
        for n in (3, 4)
    ]
    params, loss_func = list(model.parameters()), nn.CrossEntropyLoss()
    diagonal = ggn_diagonal(model, loss_func, params, data, mode=mode, mc_samples=2, seed=1)
    if mode == "exact":
        expected = GGNLinearOperator(model, loss_func, params, data)
    else:
        expected = FisherMCLinearOperator(model, loss_func, params, data, mc_samples=2, seed=1)
    torch.testing.assert_close(diagonal, expected.to_dense().diagonal(), rtol=1e-10, atol=1e-14)


def test_models_that_fail_on_single_samples_get_a_clear_error():
    model = nn.Sequential(nn.Conv1d(2, 3, 1), nn.BatchNorm1d(3), nn.Flatten(), nn.Linear(12, 2)).double()
    data = [(torch.randn(5, 2, 4, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1]))]
    # train-mode BatchNorm updates its running statistics in place, which torch.func refuses
    with pytest.raises(RuntimeError, match="model_func fails on single samples"):
        ggn_diagonal(model, nn.CrossEntropyLoss(), list(model.parameters()), data, check_deterministic=False)


class _TiedOutsideTheLayer(nn.Module):
    """The first layer's weight is used again outside its module (``F.linear``)."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        hidden = torch.tanh(self.first(x))
        return self.second(torch.nn.functional.linear(hidden, self.first.weight))


class _ScaledLinear(nn.Linear):
    """A subclass that computes something else than ``W a + b``."""

    def forward(self, x):
        return 2.0 * super().forward(x)


class _RowsAreNotSamples(nn.Module):
    """Folds ``[N, T, d]`` into ``N·T`` rows before a linear layer."""

    def __init__(self):
        super().__init__()
        self.inner, self.head = nn.Linear(2, 3), nn.Linear(6, 3)

    def forward(self, x):
        rows = self.inner(x.reshape(-1, 2))  # [N·2, 3]
        return self.head(torch.tanh(rows).reshape(x.shape[0], 6))


def _mlp():
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def _shared():
    shared = nn.Linear(4, 4)
    return nn.Sequential(shared, nn.Tanh(), shared, nn.Tanh(), nn.Linear(4, 3))


def _subclass():
    return nn.Sequential(_ScaledLinear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def _hooked():
    model = _mlp()
    model[0].register_forward_hook(lambda module, inputs, output: 2.0 * output)
    return model


def _inplace_after():
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 3))


class _PositionTable(nn.Module):
    """A linear layer on a table of 3 positions (a parameter or a buffer), shared by all samples:
    3 rows that are not samples, even in a batch of 3."""

    def __init__(self, as_buffer: bool = False):
        super().__init__()
        positions = torch.randn(3, 2)
        if as_buffer:
            self.register_buffer("positions", positions)
        else:
            self.positions = nn.Parameter(positions)
        self.project, self.head = nn.Linear(2, 4), nn.Linear(12, 3)

    def forward(self, x):
        mixed = x.reshape(x.shape[0], 3, 4) * self.project(self.positions)
        return self.head(torch.tanh(mixed).flatten(1))


class _KeywordCall(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.second(torch.tanh(self.first(input=x)))


class _MonitoredCall(nn.Module):
    """The layer runs once for a statistic (detached); its weight computes the output elsewhere."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        self.statistic = self.first(x).detach().mean()
        hidden = torch.nn.functional.linear(torch.tanh(x), self.first.weight, self.first.bias)
        return self.second(torch.tanh(hidden))


class _InputHandling(nn.Module):
    """Changes views of its input in place, branches on ``requires_grad``, keeps its input."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        self.last_input = x
        x = x.clone()
        for part in x.split(2, 1):
            part.mul_(0.5)
        if x.requires_grad:
            x = 2.0 * x
        return self.second(torch.tanh(self.first(x)))


class _SquareWithoutForwardMode(torch.autograd.Function):
    """An old-style function: no forward-mode derivative, no vmap rule."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return 2 * x * grad_output


class _WithoutForwardMode(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.second(_SquareWithoutForwardMode.apply(self.first(x)))


def _conv():
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3))


def _sequence():
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Flatten(), nn.Linear(10, 3))


# model, input shape, parameter indices that take the factored path (the others: per-sample vjps)
FACTORED_CASES = {
    "mlp": (_mlp, (4,), [0, 1, 2, 3]),
    "mlp, weights only": (_mlp, (4,), [0, 2]),
    "mlp, biases only, first weight frozen": (_mlp, (4,), [0, 1]),
    "shared layer": (_shared, (4,), [0, 1, 2, 3]),
    "tied outside the layer": (_TiedOutsideTheLayer, (4,), [2, 3]),
    "subclass of nn.Linear": (_subclass, (4,), [2, 3]),
    "linear on sequences": (_sequence, (2, 4), [0, 1, 2, 3]),
    "forward hook on the layer": (_hooked, (4,), [2, 3]),
    "in-place operation on the output": (_inplace_after, (4,), [0, 1, 2, 3]),
    "rows of a position table": (_PositionTable, (12,), [3, 4]),
    "rows of a buffer table": (partial(_PositionTable, as_buffer=True), (12,), [2, 3]),
    "input handled in place": (_InputHandling, (4,), [0, 1, 2, 3]),
    "no forward-mode derivative": (_WithoutForwardMode, (4,), [0, 1, 2, 3]),
    "a convolution besides, its bias left out": (_conv, (1, 4, 4), [0, 1, 2]),
    "keyword call": (_KeywordCall, (4,), [0, 1, 2, 3]),
    "call whose output is not used": (_MonitoredCall, (4,), [2, 3]),
    "rows are not samples": (_RowsAreNotSamples, (2, 2), [2, 3]),
}


@pytest.mark.parametrize("case", sorted(FACTORED_CASES))
@pytest.mark.parametrize("mode", ["exact", "mc"])
def test_factored_linear_layers_match_the_dense_diagonal(case, mode, monkeypatch):
    """Per-sample layers (linear on rows of samples, called once or twice, convolutions) skip
    per-sample vjps; every other case (weight used outside the layer, subclass, forward hook, rows
    that are not samples) must not."""
    module = importlib.import_module("curvkit.operators.ggn_diagonal")  # the name is also the function's

    build, input_shape, factored_indices = FACTORED_CASES[case]
    torch.manual_seed(0)
    model = build().double()
    params = list(model.parameters())
    if case == "mlp, weights only":
        params = [model[0].weight, model[2].weight]
        factored_indices = [0, 1]
    if case == "mlp, biases only, first weight frozen":
        model[0].weight.requires_grad_(False)
        params = [model[0].bias, model[2].bias]
        factored_indices = [0, 1]
    if case.startswith("a convolution besides"):  # the left-out bias still requires grad
        params = [model[0].weight, model[3].weight, model[3].bias]
    inputs = [torch.randn(size, *input_shape, dtype=torch.float64) for size in (3, 5)]  # 3 as positions
    data = [(X, torch.randint(0, 3, (X.shape[0],))) for X in inputs]
    loss_func = nn.CrossEntropyLoss()
    per_sample = []
    original = module._sum_of_squared_sample_vjps

    def recording(model_function, X, columns, indices):
        per_sample.append(list(indices))
        return original(model_function, X, columns, indices)

    monkeypatch.setattr(module, "_sum_of_squared_sample_vjps", recording)
    diagonal = ggn_diagonal(model, loss_func, params, data, mode=mode, mc_samples=2, seed=3)
    if mode == "exact":
        expected = GGNLinearOperator(model, loss_func, params, data).to_dense().diagonal()
    else:
        expected = FisherMCLinearOperator(model, loss_func, params, data, mc_samples=2, seed=3)
        expected = expected.to_dense().diagonal()
    torch.testing.assert_close(diagonal, expected, rtol=1e-10, atol=1e-14)
    assert not diagonal.requires_grad  # no graph kept alive in the result
    others = [index for index in range(len(params)) if index not in factored_indices]
    assert per_sample == ([others, others] if others else [])


def test_a_layer_whose_input_was_overwritten_does_not_qualify():
    """Squaring the recorded input would use the overwritten values (autograd refuses such a
    model for the weight's gradient; the factored path never asks autograd for it)."""
    from curvkit._layers.parameters import layer_map
    from curvkit._layers.recording import per_sample_layers, recording

    layer = nn.Linear(4, 3).double()
    layers = layer_map(layer, list(layer.parameters())).layers
    for overwrite in (False, True):
        with recording(layers):
            inputs = 3.0 * torch.randn(5, 4, dtype=torch.float64)
            output = layer(inputs)
            if overwrite:
                inputs.mul_(2.0)
            assert per_sample_layers(layers, output, 5, lambda tensor: True) == ([] if overwrite else layers)


@pytest.mark.parametrize("random_layer", [nn.Dropout(0.5), nn.BatchNorm1d(5)], ids=["dropout", "batchnorm"])
def test_random_layers_in_train_mode_are_refused(random_layer):
    """The factored path would go through them silently; the determinism probe refuses them."""
    model = nn.Sequential(nn.Linear(4, 5), random_layer, nn.Tanh(), nn.Linear(5, 3)).double().train()
    data = [(torch.randn(4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0]))]
    params = [model[0].weight, model[3].weight]
    with pytest.raises(RuntimeError, match="check_deterministic"):
        ggn_diagonal(model, nn.CrossEntropyLoss(), params, data)


def test_the_model_keeps_no_trace_of_the_factored_pass():
    """The batch input reaches the model as a dual number only inside the pass."""
    model = _InputHandling().double()
    data = [(torch.randn(3, 4, dtype=torch.float64), torch.tensor([0, 1, 2]))]
    ggn_diagonal(model, nn.CrossEntropyLoss(), list(model.parameters()), data)
    assert not model.last_input.requires_grad
    assert torch.autograd.forward_ad.unpack_dual(model.last_input).tangent is None
    assert all(not module._forward_hooks for module in model.modules())


class _TiedLanguageModel(nn.Module):
    """Tokens → embedding → linear → head tied to the embedding, sequence output ``[N, V, T]``."""

    def __init__(self, vocabulary: int = 6, width: int = 3):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, width, padding_idx=0)
        self.hidden = nn.Linear(width, width)
        self.head = nn.Linear(width, vocabulary)
        self.head.weight = self.embedding.weight

    def forward(self, tokens):
        return self.head(torch.tanh(self.hidden(self.embedding(tokens)))).transpose(1, 2)


def _pooled_chain():
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.Softplus(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 2, 2, stride=1, dilation=1),
        nn.Tanh(),
        nn.AvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 3),
    )


def _conv3d():
    return nn.Sequential(
        nn.Conv3d(1, 2, 2, stride=(1, 2, 1), padding=1), nn.Sigmoid(), nn.Flatten(), nn.LazyLinear(3)
    )


# model, a batch of n inputs, whether it is a layer chain (its columns go back by hand)
PER_LAYER_CASES = {
    "tied embedding and head, sequence targets": (
        _TiedLanguageModel,
        lambda n: torch.randint(0, 6, (n, 4)),
        False,
    ),
    "chain with pooling and smooth activations": (_pooled_chain, lambda n: torch.randn(n, 2, 4, 4), True),
    "conv3d, strided": (_conv3d, lambda n: torch.randn(n, 1, 3, 4, 3), True),
}


@pytest.mark.parametrize("case", sorted(PER_LAYER_CASES))
@pytest.mark.parametrize("mode", ["exact", "mc"])
def test_every_parameter_goes_through_its_layer_rule(case, mode, monkeypatch):
    """Embeddings (padding row, repeated tokens), tied weights and convolutions of any dimension:
    no parameter takes per-sample vjps, chains go back by hand, and the diagonal is exact."""
    module = importlib.import_module("curvkit.operators.ggn_diagonal")
    build, inputs, is_chain = PER_LAYER_CASES[case]
    torch.manual_seed(0)
    model = build().double()
    batches = [inputs(n) for n in (3, 4)]
    model(batches[0].double() if batches[0].is_floating_point() else batches[0])  # lazy layers
    batches = [X.double() if X.is_floating_point() else X for X in batches]
    targets = [
        torch.randint(0, 6, (X.shape[0], 4))
        if case.startswith("tied")
        else torch.randint(0, 3, (X.shape[0],))
        for X in batches
    ]
    data = list(zip(batches, targets))
    params, loss_func = list(model.parameters()), nn.CrossEntropyLoss()
    monkeypatch.setattr(module, "_sum_of_squared_sample_vjps", lambda *args: pytest.fail("per-sample vjps"))
    chain_diagonal = module.chain_squared_gradient_sums
    used_chain = []
    monkeypatch.setattr(
        module, "chain_squared_gradient_sums", lambda *args: used_chain.append(1) or chain_diagonal(*args)
    )
    diagonal = ggn_diagonal(model, loss_func, params, data, mode=mode, mc_samples=2, seed=3)
    if mode == "exact":
        expected = GGNLinearOperator(model, loss_func, params, data)
    else:
        expected = FisherMCLinearOperator(model, loss_func, params, data, mc_samples=2, seed=3)
    torch.testing.assert_close(diagonal, expected.to_dense().diagonal(), rtol=1e-10, atol=1e-14)
    assert bool(used_chain) == is_chain


class _ChangingData:
    """Data that changes once ``changed`` is set: samples in another order, or a batch fewer."""

    def __init__(self, batches, drop: bool):
        self.batches, self.drop, self.changed = batches, drop, False

    def __iter__(self):
        if not self.changed:
            return iter(self.batches)
        if self.drop:
            return iter(self.batches[:-1])
        return iter([(X.flip(0), y.flip(0)) for X, y in self.batches])


@pytest.mark.parametrize("chain", [True, False], ids=["chain", "hooks"])
@pytest.mark.parametrize("drop", [False, True], ids=["reordered", "a batch fewer"])
def test_the_probes_second_pass_is_the_diagonals_own(chain, drop, monkeypatch):
    """One probe pass up front, the diagonal's pass as the second: data that changes between them
    is refused after the diagonal's pass, naming the batch or the numbers of batches; unchanged
    data gives the diagonal without the probe, with one pass over the data less than before."""
    setup_module = importlib.import_module("curvkit.operators._setup")
    torch.manual_seed(0)
    model = (_mlp() if chain else _TiedOutsideTheLayer()).double()
    batches = [(torch.randn(n, 4, dtype=torch.float64), torch.randint(0, 3, (n,))) for n in (3, 4, 5)]
    params, loss_func = list(model.parameters()), nn.CrossEntropyLoss()
    data = _ChangingData(batches, drop)

    class ChangeAfterTheFirstPass(setup_module.SharedPassProbe):
        def __init__(self, *args):
            super().__init__(*args)
            data.changed = True

    monkeypatch.setattr(setup_module, "SharedPassProbe", ChangeAfterTheFirstPass)
    with pytest.raises(
        RuntimeError, match="data yielded 3 and then 2 batches" if drop else "batch 0 differs"
    ):
        ggn_diagonal(model, loss_func, params, data)
    monkeypatch.undo()
    iterations = []

    class Counted(_ChangingData):
        def __iter__(self):
            iterations.append(1)
            return super().__iter__()

    counted = Counted(batches, drop)
    probed = ggn_diagonal(model, loss_func, params, counted)
    with_probe = len(iterations)
    iterations.clear()
    torch.testing.assert_close(
        probed, ggn_diagonal(model, loss_func, params, counted, check_deterministic=False)
    )
    without_probe = len(iterations)
    iterations.clear()
    list(MiniBatchEngine(counted, torch.device("cpu")).batches())  # what one pass over the data takes
    assert with_probe - without_probe == len(iterations)


class _NormalizedLanguageModel(_TiedLanguageModel):
    """The tied model with a LayerNorm (no rule) and a convolution over positions."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(3)
        self.mix = nn.Conv1d(3, 3, 2, padding=1)
        self.first = nn.Linear(4, 4)

    def forward(self, tokens):
        features = self.norm(self.embedding(tokens))  # [N, T, 3]
        mixed = torch.tanh(self.mix(features.transpose(1, 2))[..., :-1]).transpose(1, 2)
        return self.head(torch.tanh(self.hidden(mixed))).transpose(1, 2)


@pytest.mark.parametrize("mode", ["exact", "mc"])
def test_beside_per_sample_vjps_only_layers_without_per_sample_gradients_stay(mode, monkeypatch):
    """A LayerNorm takes per-sample vjps: then the convolution and the linear layers on sequences
    (which form per-sample gradients) join it, and so does the embedding tied to the head;
    the diagonal stays exact."""
    module = importlib.import_module("curvkit.operators.ggn_diagonal")
    torch.manual_seed(0)
    model = _NormalizedLanguageModel().double()
    data = [(torch.randint(0, 6, (n, 4)), torch.randint(0, 6, (n, 4))) for n in (3, 2)]
    params = [param for name, param in model.named_parameters() if not name.startswith("first")]
    per_sample = []
    original = module._sum_of_squared_sample_vjps

    def recording(model_function, X, columns, indices):
        per_sample.append(sorted(indices))
        return original(model_function, X, columns, indices)

    monkeypatch.setattr(module, "_sum_of_squared_sample_vjps", recording)
    diagonal = ggn_diagonal(model, nn.CrossEntropyLoss(), params, data, mode=mode, mc_samples=2, seed=3)
    assert per_sample == [list(range(len(params)))] * 2
    if mode == "exact":
        expected = GGNLinearOperator(model, nn.CrossEntropyLoss(), params, data)
    else:
        expected = FisherMCLinearOperator(model, nn.CrossEntropyLoss(), params, data, mc_samples=2, seed=3)
    torch.testing.assert_close(diagonal, expected.to_dense().diagonal(), rtol=1e-10, atol=1e-14)
