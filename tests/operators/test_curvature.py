"""Curvature operators against dense ground truth on the zoo, plus their structural properties."""

import pytest
import torch
from contract import assert_close, contract_on_cases
from scipy.sparse.linalg import cg, eigsh
from zoo import SMALL_PROBLEM_IDS, make_problem_from_id

from curvkit import (
    EFLinearOperator,
    FisherMCLinearOperator,
    GGNLinearOperator,
    HessianLinearOperator,
    IdentityLinearOperator,
    reference,
)

OPERATORS = {
    "hessian": HessianLinearOperator,
    "ggn": GGNLinearOperator,
    "ef": EFLinearOperator,
    "fisher_mc": FisherMCLinearOperator,
}
REFERENCES = {
    "hessian": reference.hessian_matrix,
    "ggn": reference.ggn_matrix,
    "ef": reference.empirical_fisher_matrix,
    "fisher_mc": reference.fisher_mc_matrix,
}


def build(kind, problem, **kwargs):
    return OPERATORS[kind](
        problem.model,
        problem.loss_func,
        problem.params,
        problem.data,
        batch_size_fn=problem.batch_size_fn,
        **kwargs,
    )


def assert_matches(actual, expected, dtype):
    """Tight tolerances: float64 to ~1e-10 of the largest entry, float32 to ~1e-5."""
    scale = max(expected.abs().max().item(), 1e-3)
    rtol, atol = (1e-7, 1e-10) if dtype == torch.float64 else (1e-4, 1e-5)
    torch.testing.assert_close(actual.to(expected), expected, rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize("kind", sorted(OPERATORS))
def test_matches_reference(kind, problem, reference_of):
    """Columns (``to_dense``) and a single vector take different derivative paths; both must agree."""
    operator = build(kind, problem)
    assert operator.shape == (problem.dim, problem.dim)
    assert operator.dtype == problem.dtype
    expected = reference_of(problem.name, kind)
    assert_matches(operator.to_dense(), expected, problem.dtype)
    vector = torch.randn(problem.dim, dtype=problem.dtype, generator=torch.Generator().manual_seed(0))
    assert_matches(operator @ vector, expected.to(problem.dtype) @ vector, problem.dtype)


@pytest.mark.parametrize("kind", sorted(OPERATORS))
def test_cached_batches_give_the_same_matrix(kind, small_problem, reference_of):
    operator = build(kind, small_problem, cache_batches=True)
    expected = reference_of(small_problem.name, kind)
    vector = torch.randn(small_problem.dim, dtype=small_problem.dtype)
    for _ in range(2):  # the first product fills the cache, the second uses it
        assert_matches(operator @ vector, expected.to(small_problem.dtype) @ vector, small_problem.dtype)
    first = operator.to_dense()
    assert_matches(first, expected, small_problem.dtype)
    assert_matches(operator.to_dense(chunk_size=7), first, small_problem.dtype)


@pytest.mark.parametrize("kind", sorted(OPERATORS))
def test_symmetric_and_psd_where_theory_says(kind, small_problem):
    dense = build(kind, small_problem).to_dense()
    torch.testing.assert_close(dense, dense.T, rtol=1e-10, atol=1e-12)
    if kind != "hessian":
        eigenvalues = torch.linalg.eigvalsh(dense)
        assert eigenvalues.min() >= -1e-10 * eigenvalues.abs().max()
        assert build(kind, small_problem, check_deterministic=False).is_psd


def test_hessian_blocks_are_the_diagonal_blocks(small_problem, reference_of):
    sizes = [p.numel() for p in small_problem.param_list]
    block_sizes = [1, len(sizes) - 1] if len(sizes) > 1 else [1]
    H = build("hessian", small_problem, block_sizes=block_sizes)
    full = reference_of(small_problem.name, "hessian")
    boundary = sizes[0]
    expected = torch.zeros_like(full)
    expected[:boundary, :boundary] = full[:boundary, :boundary]
    expected[boundary:, boundary:] = full[boundary:, boundary:]
    assert_matches(H.to_dense(), expected, small_problem.dtype)


def _optimizer_step(problem):
    with torch.no_grad():
        for param in problem.param_list:
            param.mul_(1.1)


def _vector_to_parameters(problem):
    vector = torch.nn.utils.parameters_to_vector(problem.param_list)
    torch.nn.utils.vector_to_parameters(1.1 * vector, problem.param_list)


def _through_data(problem):
    for param in problem.param_list:
        param.data.mul_(1.1)


def _other_parameters(problem):
    """Parameters of the module that are not among ``params`` (a frozen feature extractor, say)."""
    with torch.no_grad():
        problem.model[0].weight.mul_(1.1)


PARAMETER_UPDATES = {
    "optimizer step": _optimizer_step,
    "vector_to_parameters": _vector_to_parameters,
    "through .data": _through_data,
    "other parameters": _other_parameters,
}


@pytest.mark.parametrize("kind", sorted(OPERATORS))
@pytest.mark.parametrize("num_columns", [1, 3])
@pytest.mark.parametrize("update", sorted(PARAMETER_UPDATES))
def test_cache_follows_parameter_updates(kind, num_columns, update):
    """After the model changed, a cached operator is the operator at the new parameters."""
    problem = make_problem_from_id("mlp-ce-mean-three-list")
    params = problem.param_list[2:] if update == "other parameters" else problem.params
    cached = OPERATORS[kind](problem.model, problem.loss_func, params, problem.data, cache_batches=True)
    dim = sum(param.numel() for param in params)
    vectors = torch.randn(dim, num_columns, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cached @ vectors
    PARAMETER_UPDATES[update](problem)
    fresh = OPERATORS[kind](problem.model, problem.loss_func, params, problem.data)
    assert_matches(cached @ vectors, fresh @ vectors, torch.float64)


@pytest.mark.parametrize("kind", sorted(OPERATORS))
def test_a_module_registered_twice_is_left_as_it_was(kind):
    """``nn.Sequential(lin, act, lin)``: torch's functional_call can leave a substitute behind."""
    torch.manual_seed(0)
    shared = torch.nn.Linear(3, 3).double()
    model = torch.nn.Sequential(shared, torch.nn.Tanh(), shared)
    weight = shared.weight
    data = [(torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 3, (4,)))]
    params, loss_func = list(model.parameters()), torch.nn.CrossEntropyLoss()
    operator = OPERATORS[kind](model, loss_func, params, data)
    dense = operator.to_dense()
    operator @ torch.ones(operator.shape[0], dtype=torch.float64)
    assert shared.weight is weight and model[2].weight is weight
    assert_matches(dense, _REFERENCE_FUNCTIONS[kind](model, loss_func, params, data), torch.float64)
    assert shared.weight is weight


_REFERENCE_FUNCTIONS = {
    "hessian": reference.hessian_matrix,
    "ggn": reference.ggn_matrix,
    "ef": reference.empirical_fisher_matrix,
    "fisher_mc": reference.fisher_mc_matrix,
}


def test_cache_follows_train_and_eval_mode():
    """BatchNorm computes another function in train mode; the cache must not keep the eval one."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)
    ).double()
    model.eval()
    data = [(torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1, 0]))]
    options = {"check_deterministic": False}
    params, loss_func = list(model.parameters()), torch.nn.CrossEntropyLoss()
    cached = GGNLinearOperator(model, loss_func, params, data, cache_batches=True, **options)
    vector = torch.ones(cached.shape[0], dtype=torch.float64)
    cached @ vector
    model.train()
    model[1].momentum = 0.0  # running statistics stay put, so both operators see the same model
    assert_matches(
        cached @ vector, GGNLinearOperator(model, loss_func, params, data, **options) @ vector, torch.float64
    )


def test_cache_is_kept_while_the_model_does_not_change():
    """Non-finite buffers (clamp bounds, say) must not make every product look like a new model."""
    problem = make_problem_from_id("mlp-ce-mean-three-list")
    problem.model.register_buffer("bounds", torch.tensor([-float("inf"), float("inf"), float("nan")]))
    forward_passes = []
    problem.model.register_forward_hook(lambda *_: forward_passes.append(1))
    cached = build("ggn", problem, cache_batches=True, check_deterministic=False)
    vector = torch.ones(problem.dim, dtype=torch.float64)
    cached @ vector
    forward_passes.clear()
    for _ in range(3):
        cached @ vector
    assert not forward_passes


@pytest.mark.parametrize("kind", sorted(OPERATORS))
def test_column_blocks_give_the_same_matrix(kind, small_problem, reference_of):
    """``max_columns`` splits ``to_dense``'s columns into blocks: each block one pass over the data,
    the Monte-Carlo Fisher's draw re-seeded for each, so that every block sees the same matrix."""
    operator = build(kind, small_problem)
    operator.max_columns = 3
    assert_matches(operator.to_dense(), reference_of(small_problem.name, kind), small_problem.dtype)


def test_batch_splitting_does_not_change_the_matrix():
    """Three batches of 3, 5, 2 and one batch of all 10 samples give the same matrices."""
    split = make_problem_from_id("mlp-ce-mean-three-list")
    X = torch.cat([X for X, _ in split.data])
    y = torch.cat([y for _, y in split.data])
    for kind in ("hessian", "ggn", "ef"):
        together = OPERATORS[kind](split.model, split.loss_func, split.params, [(X, y)]).to_dense()
        assert_matches(build(kind, split).to_dense(), together, torch.float64)


def test_mc_fisher_seeds_and_samples():
    problem = make_problem_from_id("mlp-ce-mean-three-list")
    first = build("fisher_mc", problem, seed=1).to_dense()
    assert_matches(build("fisher_mc", problem, seed=1).to_dense(), first, torch.float64)
    assert not torch.allclose(build("fisher_mc", problem, seed=2).to_dense(), first)
    many = build("fisher_mc", problem, mc_samples=3000).to_dense()
    ggn = build("ggn", problem).to_dense()
    assert (many - ggn).norm() < 0.05 * ggn.norm()


def test_scipy_eigsh_and_cg_on_curvature_operators(reference_of):
    problem = make_problem_from_id("mlp-ce-mean-three-list")
    H = build("hessian", problem)
    top = eigsh(H.to_scipy(), k=3, which="LA", return_eigenvectors=False)
    expected = torch.linalg.eigvalsh(reference_of(problem.name, "hessian"))[-3:]
    torch.testing.assert_close(torch.as_tensor(sorted(top)), expected, rtol=1e-6, atol=1e-8)

    damped = build("ggn", problem) + 0.1 * IdentityLinearOperator(problem.dim)
    rhs = torch.linspace(-1, 1, problem.dim, dtype=torch.float64)
    solution, info = cg(damped.to_scipy(), rhs.numpy(), rtol=1e-12, maxiter=10 * problem.dim)
    assert info == 0
    dense = reference_of(problem.name, "ggn") + 0.1 * torch.eye(problem.dim, dtype=torch.float64)
    torch.testing.assert_close(
        torch.as_tensor(solution), torch.linalg.solve(dense, rhs), rtol=1e-6, atol=1e-8
    )


def test_plain_callable_uses_autograd_and_agrees():
    problem = make_problem_from_id("cnn-ce-mean-three-list")

    def model_func(X):  # a closure, not an nn.Module
        return problem.model(X)

    for kind in ("hessian", "ggn", "ef"):
        expected = build(kind, problem).to_dense()
        actual = OPERATORS[kind](model_func, problem.loss_func, problem.params, problem.data).to_dense()
        assert_matches(actual, expected, torch.float64)


def test_dataloader_and_progressbar(capsys, monkeypatch):
    problem = make_problem_from_id("mlp-mse-mean-three-list")
    X = torch.cat([X for X, _ in problem.data])
    y = torch.cat([y for _, y in problem.data])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=4)
    monkeypatch.setattr("curvkit._engine.iteration.PASS_BAR_DELAY", 60.0)
    operator = GGNLinearOperator(problem.model, problem.loss_func, problem.params, loader, progressbar=True)
    assert_matches(operator.to_dense(), build("ggn", problem).to_dense(), torch.float64)
    assert capsys.readouterr().err == ""  # passes shorter than the delay show no bar
    monkeypatch.setattr("curvkit._engine.iteration.PASS_BAR_DELAY", 0.0)
    operator @ torch.ones(operator.shape[0], dtype=torch.float64)
    assert "GGNLinearOperator" in capsys.readouterr().err
    assert operator.num_data == 10


def test_generic_loss_uses_differentiated_output_hessian():
    """A loss curvkit has no closed form for (a weighted CE) is differentiated exactly."""
    problem = make_problem_from_id("mlp-ce-mean-three-list")
    weighted = torch.nn.CrossEntropyLoss(
        weight=torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64), reduction="sum"
    )
    G = GGNLinearOperator(problem.model, weighted, problem.params, problem.data).to_dense()
    H = HessianLinearOperator(problem.model, weighted, problem.params, problem.data)
    # for a linear last layer, the GGN and Hessian blocks of the last weight agree
    last = problem.param_list[-2].numel() + problem.param_list[-1].numel()
    assert_matches(G[-last:, -last:], H.to_dense()[-last:, -last:], torch.float64)


@pytest.fixture(params=[(kind, pid) for kind in sorted(OPERATORS) for pid in SMALL_PROBLEM_IDS[:3]], ids=str)
def case(request, reference_of):
    kind, problem_id = request.param
    problem = make_problem_from_id(problem_id)
    return build(kind, problem), reference_of(problem_id, kind)


TestOperatorContract = contract_on_cases()  # over the module's own ``case`` fixture


def test_float32_problem_accepts_float64_numpy_with_one_warning():
    problem = make_problem_from_id("mlp-ce-mean-three-list-f32")
    operator = build("ggn", problem)
    with pytest.warns(UserWarning, match="float64, while the linear operator is float32"):
        result = operator @ torch.ones(problem.dim, dtype=torch.float64).numpy()
    assert result.dtype.name == "float32"
    assert_close(result, operator @ torch.ones(problem.dim), operator)


@pytest.mark.parametrize("kind", sorted(OPERATORS))
def test_transformer_in_default_train_mode(kind, reference_of):
    """Fused attention kernels, train or eval mode: products work without user changes."""
    problem = make_problem_from_id("transformer-ceseq-mean-three-list")
    problem.model.train()  # dropout=0, so the matrix is that of eval mode
    operator = build(kind, problem)
    assert_matches(operator.to_dense(), reference_of(problem.name, kind), torch.float64)


def test_psd_tags_follow_the_loss():
    problem = make_problem_from_id("mlp-mse-mean-three-list")
    assert GGNLinearOperator(problem.model, problem.loss_func, problem.params, problem.data).is_psd
    assert not HessianLinearOperator(problem.model, problem.loss_func, problem.params, problem.data).is_psd

    def quartic(output, target):  # not convex in the output
        return ((output - target) ** 2 - 1.0).square().mean()

    ggn = GGNLinearOperator(problem.model, quartic, problem.params, problem.data)
    assert ggn.is_symmetric and not ggn.is_psd


class ConvAttention(torch.nn.Module):
    """Convolutions (forward-mode ``J v``) followed by attention whose eval-mode fast path has none
    (products switch the fast path off)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(3, 4, kernel_size=3, padding=1)
        self.attention = torch.nn.MultiheadAttention(4, num_heads=2, batch_first=True)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        hidden = self.conv(x).transpose(1, 2)
        attended, _ = self.attention(hidden, hidden, hidden, need_weights=False)
        return self.head(attended.mean(dim=1))


def test_eval_mode_attention_keeps_forward_mode():
    """The fused eval-mode fast path has no forward-mode derivative; products switch it off, so
    they keep forward mode (which this convolutional model prefers) instead of falling back."""
    torch.manual_seed(0)
    model = ConvAttention().double().eval()
    data = [(torch.randn(n, 3, 5, dtype=torch.float64), torch.randint(0, 2, (n,))) for n in (3, 4)]
    params = list(model.parameters())
    operator = GGNLinearOperator(model, torch.nn.CrossEntropyLoss(), params, data)
    assert operator._setup.model.prefers_forward_mode
    expected = reference.ggn_matrix(model, torch.nn.CrossEntropyLoss(), params, data)
    assert_matches(operator.to_dense(), expected, torch.float64)
    assert operator._setup.model.forward_mode_available


class SquareWithoutJvp(torch.autograd.Function):
    """``x²`` with a backward formula but no forward-mode one."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return 2 * x * grad_output


class SquaredConvolution(torch.nn.Conv1d):
    """A convolution (so columns run in forward mode too), squared without a jvp."""

    def __init__(self):
        super().__init__(2, 2, kernel_size=2)

    def forward(self, x):
        return SquareWithoutJvp.apply(super().forward(x)).flatten(1)


@pytest.mark.parametrize("num_columns", [1, 3])
def test_single_vectors_and_columns_fall_back_to_reverse_mode(num_columns):
    """Dual numbers (one vector) and ``torch.func.jvp`` (columns) meet an operation without jvp."""
    torch.manual_seed(0)
    model = SquaredConvolution().double()
    data = [(torch.randn(n, 2, 3).double(), torch.randn(n, 4).double()) for n in (3, 4)]
    params = list(model.parameters())
    operator = GGNLinearOperator(model, torch.nn.MSELoss(), params, data, check_deterministic=False)
    vectors = torch.randn(operator.shape[1], num_columns, dtype=torch.float64)
    expected = reference.ggn_matrix(model, torch.nn.MSELoss(), params, data) @ vectors
    assert_matches(operator @ vectors, expected, torch.float64)
    assert not operator._setup.model.forward_mode_available


class TiedLayers(torch.nn.Module):
    """Two layers whose weights are one parameter under two names (as in tied embeddings)."""

    def __init__(self):
        super().__init__()
        self.first, self.second = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
        self.second.weight = self.first.weight

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))


@pytest.mark.parametrize("kind", ["ggn", "hessian"])
def test_parameters_tied_under_two_names(kind):
    """Dual numbers and ``torch.func`` substitute a tied parameter under every name it has."""
    torch.manual_seed(0)
    model = TiedLayers().double()
    data = [(torch.randn(n, 4).double(), torch.randn(n, 4).double()) for n in (3, 2)]
    params = list(model.parameters())
    operator = OPERATORS[kind](model, torch.nn.MSELoss(), params, data)
    make_reference = {"ggn": reference.ggn_matrix, "hessian": reference.hessian_matrix}[kind]
    expected = make_reference(model, torch.nn.MSELoss(), params, data)
    vectors = torch.randn(operator.shape[1], 3, dtype=torch.float64)
    assert_matches(operator @ vectors[:, 0], expected @ vectors[:, 0], torch.float64)
    assert_matches(operator @ vectors, expected @ vectors, torch.float64)


class _StopGradient(torch.nn.Module):
    """A parameter reaches the output twice: directly and through ``torch.no_grad()``, which
    forward-mode derivatives ignore; the model's gradients treat that path as a constant."""

    def __init__(self):
        super().__init__()
        self.inner, self.head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 2)

    def forward(self, x):
        with torch.no_grad():
            target = self.inner(x)
        return self.head(torch.tanh(self.inner(x)) + target)


@pytest.mark.parametrize("kind", [*sorted(OPERATORS), "jacobian"])
def test_products_follow_reverse_mode_where_forward_mode_disagrees(kind):
    """The construction probe compares ``⟨J v, w⟩`` with ``⟨v, Jᵀ w⟩`` and, as here, switches the
    model to reverse mode: without it, ``J v`` counts the stop-gradient path (errors of order 1)."""
    from curvkit import JacobianLinearOperator

    torch.manual_seed(0)
    model = _StopGradient().double()
    data = [(torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,)))]
    params, loss_func = list(model.parameters()), torch.nn.CrossEntropyLoss()
    if kind == "jacobian":
        operator = JacobianLinearOperator(model, params, data)
        expected = reference.jacobian_matrix(model, params, data)
    else:
        operator = OPERATORS[kind](model, loss_func, params, data)
        expected = REFERENCES[kind](model, loss_func, params, data)
    vector = torch.randn(operator.shape[1], dtype=torch.float64)
    assert_matches(operator @ vector, expected @ vector, torch.float64)
    assert_matches(operator.to_dense(), expected, torch.float64)
