"""Checks of ``curvkit.reference`` against brute-force autograd and against its own definitions."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.autograd.functional import jacobian as autograd_jacobian
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from zoo import LOSSES, PROBLEM_IDS, Problem, dict_batch_size, make_problem, make_problem_from_id

from curvkit import reference
from curvkit.examples.functorch import (
    functorch_empirical_fisher,
    functorch_ggn,
    functorch_hessian,
    functorch_jacobian,
)

BRUTE_FORCE_IDS = [
    "mlp-ce-mean-three-list",
    "cnn-mse-sum-three-list",
    "shared-bce-sum-three-list",
    "transformer-ceseq-mean-three-list",
    "dict_input-bce-mean-three-subset",
    "mlp-ce-mean-three-list-f32",
]


def _flat_function(problem: Problem, X) -> callable:
    """``θ ↦ f_θ(X)`` for the flat parameter vector of ``problem``, built by hand."""
    name_of = {id(p): name for name, p in problem.model.named_parameters()}
    tensors = problem.param_list
    names = [name_of[id(t)] for t in tensors]

    def output(theta: Tensor) -> Tensor:
        blocks = theta.split([t.numel() for t in tensors])
        weights = {name: b.reshape(t.shape) for name, b, t in zip(names, blocks, tensors)}
        return functional_call(problem.model, weights, (X,))

    return output


def _args(problem: Problem) -> tuple:
    return problem.model, problem.loss_func, problem.params, problem.data


def _theta(problem: Problem) -> Tensor:
    return torch.cat([p.detach().flatten() for p in problem.param_list])


def _batch_weight(problem: Problem, y: Tensor) -> float:
    """Weight of a batch's loss in the full-data risk (every zoo loss has equal-size samples)."""
    return y.shape[0] / problem.num_data if problem.loss_func.reduction == "mean" else 1.0


def _tolerances(problem: Problem) -> dict[str, float]:
    return {"rtol": 1e-4, "atol": 1e-5} if problem.dtype == torch.float32 else {"rtol": 1e-7, "atol": 1e-9}


def _autograd_hessian_columns(risk, theta: Tensor, columns: Tensor) -> Tensor:
    """Columns of the Hessian by double backward with plain ``torch.autograd`` (no ``torch.func``)."""
    theta = theta.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(risk(theta), theta, create_graph=True)
    return torch.stack(
        [torch.autograd.grad(gradient[j], theta, retain_graph=True)[0] for j in columns.tolist()], dim=1
    )


@pytest.mark.parametrize("problem_id", BRUTE_FORCE_IDS)
def test_hessian_matches_autograd(problem_id: str):
    """Risk as a weighted sum over batches, differentiated twice by ``torch.autograd``.

    About 24 evenly spaced full columns are checked (double backward is slow for convolutions);
    each column holds entries in every row, including the transformer's LayerNorm-weight rows,
    where differentiating through ``jacrev`` of ``layer_norm`` goes wrong in torch 2.13.
    """
    problem = make_problem_from_id(problem_id)

    def risk(theta: Tensor) -> Tensor:
        return sum(
            _batch_weight(problem, y) * problem.loss_func(_flat_function(problem, X)(theta), y)
            for X, y in problem.data
        )

    columns = torch.arange(0, problem.dim, -(-problem.dim // 24))
    with sdpa_kernel(SDPBackend.MATH):
        expected = _autograd_hessian_columns(risk, _theta(problem), columns)
    H = reference.hessian_matrix(*_args(problem), problem.batch_size_fn)
    torch.testing.assert_close(H[:, columns], expected, **_tolerances(problem))


@pytest.mark.parametrize("problem_id", [*BRUTE_FORCE_IDS, "transformer-mse-mean-one-list"])
def test_jacobian_matches_autograd(problem_id: str):
    problem = make_problem_from_id(problem_id)
    theta = _theta(problem)
    with sdpa_kernel(SDPBackend.MATH):
        blocks = [
            autograd_jacobian(_flat_function(problem, X), theta, vectorize=True) for X, _ in problem.data
        ]
    expected = torch.cat([block.reshape(-1, theta.numel()) for block in blocks])
    J = reference.jacobian_matrix(problem.model, problem.params, problem.data, problem.batch_size_fn)
    torch.testing.assert_close(J, expected, **_tolerances(problem))


@pytest.mark.parametrize("loss", ["mse", "ce", "bce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ggn_equals_hessian_for_linear_model(loss: str, reduction: str):
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    loss_func = LOSSES[loss](reduction=reduction)
    data = []
    for size in (3, 5, 2):
        X = torch.randn(size, 4, dtype=torch.float64)
        targets = {
            "mse": torch.randn(size, 3, dtype=torch.float64),
            "ce": torch.randint(0, 3, (size,)),
            "bce": torch.rand(size, 3, dtype=torch.float64),
        }
        data.append((X, targets[loss]))
    params = list(model.parameters())
    G = reference.ggn_matrix(model, loss_func, params, data)
    H = reference.hessian_matrix(model, loss_func, params, data)
    torch.testing.assert_close(G, H, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("problem_id", PROBLEM_IDS)
def test_symmetry_and_psd(problem_id: str, reference_of):
    """Hessian symmetric; GGN and EF symmetric positive semi-definite."""
    problem = make_problem_from_id(problem_id)
    eps = 1e-4 if problem.dtype == torch.float32 else 1e-10
    for kind in ("hessian", "ggn", "ef"):
        matrix = reference_of(problem_id, kind)
        assert matrix.shape == (problem.dim, problem.dim)
        scale = matrix.abs().max()
        torch.testing.assert_close(matrix, matrix.T, rtol=0, atol=eps * scale)
        if kind != "hessian":
            assert torch.linalg.eigvalsh(matrix).min() >= -eps * scale


@pytest.mark.parametrize(
    ("model", "loss", "reduction", "num_terms"),
    [("mlp", "mse", "mean", 30), ("mlp", "bce", "sum", 1), ("transformer", "ceseq", "mean", 40)],
)
def test_empirical_fisher_matches_python_loop(model: str, loss: str, reduction: str, num_terms: int):
    """``EF = s Σ_n g_n g_nᵀ``, ``g_n`` the gradient of sample ``n``'s summed loss, ``s = 1/T`` or 1."""
    problem = make_problem(model, loss, reduction, layout="three", params_kind="dict")
    summed = type(problem.loss_func)(reduction="sum")
    params = problem.param_list
    expected = torch.zeros(problem.dim, problem.dim, dtype=torch.float64)
    with sdpa_kernel(SDPBackend.MATH):
        for X, y in problem.data:
            for n in range(y.shape[0]):
                sample_loss = summed(problem.model(X[n : n + 1]), y[n : n + 1])
                g = torch.cat([g.flatten() for g in torch.autograd.grad(sample_loss, params)])
                expected += torch.outer(g, g)
    expected /= num_terms
    EF = reference.empirical_fisher_matrix(problem.model, problem.loss_func, problem.params, problem.data)
    torch.testing.assert_close(EF, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("model", "loss", "reduction", "params_kind"),
    [
        ("mlp", "mse", "mean", "list"),
        ("cnn", "ce", "sum", "list"),
        ("transformer", "ceseq", "mean", "subset"),
        ("shared", "bce", "mean", "dict"),
    ],
)
def test_fisher_mc_approaches_ggn(model: str, loss: str, reduction: str, params_kind: str):
    """With many samples, the MC-Fisher approaches the GGN, for every loss and both reductions."""
    problem = make_problem(model, loss, reduction, layout="three", params_kind=params_kind)
    args = (problem.model, problem.loss_func, problem.params, problem.data)
    G = reference.ggn_matrix(*args)
    F = reference.fisher_mc_matrix(*args, mc_samples=3000, seed=1)
    relative_error = torch.linalg.norm(F - G) / torch.linalg.norm(G)
    assert relative_error < 0.1, f"relative error {relative_error:.3f}"


def test_fisher_mc_is_seeded():
    problem = make_problem("mlp", "ce", "mean", layout="three")
    args = (problem.model, problem.loss_func, problem.params, problem.data)
    F1 = reference.fisher_mc_matrix(*args, mc_samples=2, seed=3)
    torch.testing.assert_close(F1, reference.fisher_mc_matrix(*args, mc_samples=2, seed=3), rtol=0, atol=0)
    assert not torch.allclose(F1, reference.fisher_mc_matrix(*args, mc_samples=2, seed=4))


def test_full_data_matrices_independent_of_batching():
    """One batch and three batches of the same samples give the same matrices."""
    one = make_problem("cnn", "ce", "mean", layout="one")
    three = make_problem("cnn", "ce", "mean", layout="three")
    X = torch.cat([X for X, _ in three.data])
    y = torch.cat([y for _, y in three.data])
    resplit = [(X, y)]
    for name in ("hessian_matrix", "ggn_matrix", "empirical_fisher_matrix"):
        func = getattr(reference, name)
        torch.testing.assert_close(
            func(three.model, three.loss_func, three.params, three.data),
            func(three.model, three.loss_func, three.params, resplit),
        )
    assert one.dim == three.dim


def test_functorch_wrappers_accept_list_dict_and_input_key():
    problem = make_problem("dict_input", "ce", "mean", layout="three", params_kind="dict")
    as_list = list(problem.params.values())
    args = (problem.model, problem.loss_func)
    for wrapper, ref in [
        (functorch_hessian, reference.hessian_matrix),
        (functorch_ggn, reference.ggn_matrix),
        (functorch_empirical_fisher, reference.empirical_fisher_matrix),
    ]:
        expected = ref(*args, problem.params, problem.data, dict_batch_size)
        torch.testing.assert_close(wrapper(*args, problem.params, problem.data, input_key="x"), expected)
        torch.testing.assert_close(wrapper(*args, as_list, problem.data, input_key="x"), expected)
    J = functorch_jacobian(problem.model, as_list, problem.data, input_key="x")
    assert J.shape == (problem.num_data * 3, problem.dim)


def test_errors_name_the_argument():
    problem = make_problem("dict_input", "mse", "mean")
    args = (problem.model, problem.loss_func)
    with pytest.raises(ValueError, match="batch_size_fn"):
        reference.hessian_matrix(*args, problem.params, problem.data)
    with pytest.raises(ValueError, match="data"):
        reference.hessian_matrix(*args, problem.params, [], dict_batch_size)
    with pytest.raises(ValueError, match=r"params\[0\]"):
        reference.ggn_matrix(*args, [torch.zeros(3, requires_grad=True)], problem.data, dict_batch_size)
    with pytest.raises(ValueError, match="reduction"):
        reference.empirical_fisher_matrix(
            problem.model, nn.MSELoss(reduction="none"), problem.params, problem.data, dict_batch_size
        )
    with pytest.raises(TypeError, match="model_func"):
        reference.jacobian_matrix(lambda x: x, problem.params, problem.data, dict_batch_size)
