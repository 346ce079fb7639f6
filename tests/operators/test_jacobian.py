"""Jacobian and transposed Jacobian against ground truth, and their adjoint consistency."""

import pytest
import torch
from contract import contract_on_cases
from hypothesis import given, settings
from hypothesis import strategies as st
from zoo import SMALL_PROBLEM_IDS, make_problem_from_id

from curvkit import JacobianLinearOperator, TransposedJacobianLinearOperator


def build(problem, cls=JacobianLinearOperator, **kwargs):
    return cls(problem.model, problem.params, problem.data, batch_size_fn=problem.batch_size_fn, **kwargs)


def test_matches_reference(problem, reference_of):
    J = build(problem)
    expected = reference_of(problem.name, "jacobian")
    assert J.shape == tuple(expected.shape)
    tolerance = 1e-10 if problem.dtype == torch.float64 else 1e-5
    scale = expected.abs().max().item()
    torch.testing.assert_close(J.to_dense(), expected.to(J.dtype), rtol=tolerance, atol=tolerance * scale)
    JT = build(problem, TransposedJacobianLinearOperator)
    assert JT.shape == tuple(expected.T.shape)
    torch.testing.assert_close(JT.to_dense(), expected.T.to(J.dtype), rtol=tolerance, atol=tolerance * scale)


@pytest.mark.parametrize("cls", [JacobianLinearOperator, TransposedJacobianLinearOperator])
def test_column_blocks_give_the_same_matrix(cls, small_problem, reference_of):
    operator = build(small_problem, cls)
    operator.max_columns = 2
    expected = reference_of(small_problem.name, "jacobian")
    expected = expected if cls is JacobianLinearOperator else expected.T
    torch.testing.assert_close(operator.to_dense(), expected.to(operator.dtype), rtol=1e-10, atol=1e-10)


def test_targets_may_be_none():
    """Jacobians ignore the targets; ``(X, None)`` batches pass the determinism probe too."""
    problem = make_problem_from_id("mlp-ce-mean-three-list")
    without_targets = [(X, None) for X, _ in problem.data]
    J = JacobianLinearOperator(problem.model, problem.params, without_targets)
    torch.testing.assert_close(J.to_dense(), build(problem).to_dense())


def test_outputs_per_sample_must_not_change_between_batches():
    model = torch.nn.Linear(3, 2).double()
    data = [(torch.randn(4, 3, dtype=torch.float64), None), (torch.randn(2, 5, 3, dtype=torch.float64), None)]
    J = JacobianLinearOperator(model, list(model.parameters()), data, check_deterministic=False)
    with pytest.raises(
        ValueError, match="batch 1: model_func gives 10 outputs per sample, the first batch 2"
    ):
        J @ torch.ones(J.shape[1], dtype=torch.float64)


@pytest.mark.parametrize("cache_batches", [False, True])
def test_transposed_products(small_problem, reference_of, cache_batches):
    J = build(small_problem, cache_batches=cache_batches)
    expected = reference_of(small_problem.name, "jacobian")
    W = torch.randn(J.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(J.T @ W, expected.T @ W, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(J.T @ W, expected.T @ W, rtol=1e-10, atol=1e-10)  # second use of the cache


_PROBLEM = make_problem_from_id("transformer-ceseq-mean-three-list")
_J = build(_PROBLEM, check_deterministic=False)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(-10, 10), num_columns=st.integers(1, 3))
def test_adjoint_consistency_and_linearity_on_a_transformer(seed, scale, num_columns):
    """``<J v, w> = <v, Jᵀ w>`` and ``J(a v + u) = a J v + J u`` for random directions."""
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(_J.shape[1], num_columns, dtype=torch.float64, generator=generator)
    u = torch.randn(_J.shape[1], num_columns, dtype=torch.float64, generator=generator)
    w = torch.randn(_J.shape[0], num_columns, dtype=torch.float64, generator=generator)
    Jv, JTw = _J @ v, _J.T @ w
    torch.testing.assert_close((Jv * w).sum(0), (v * JTw).sum(0), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(_J @ (scale * v + u), scale * Jv + _J @ u, rtol=1e-9, atol=1e-9)


@pytest.fixture(params=SMALL_PROBLEM_IDS[:3], ids=str)
def case(request, reference_of):
    problem = make_problem_from_id(request.param)
    return build(problem), reference_of(request.param, "jacobian")


TestJacobianContract = contract_on_cases()  # over the module's own ``case`` fixture


@pytest.mark.parametrize("columns", [None, 3], ids=["vector", "matrix"])
def test_tensor_lists_have_the_model_output_shape(small_problem, reference_of, columns):
    """As in curvlinops: J answers a parameter list with [N, *out] (and [N, *out, k]), Jᵀ takes it."""
    J, JT = build(small_problem), build(small_problem, TransposedJacobianLinearOperator)
    dense = reference_of(small_problem.name, "jacobian").to(J.dtype)
    with torch.no_grad():
        output = small_problem.model(small_problem.data[0][0])
    output_shape = (J.shape[0] // output[0].numel(), *output.shape[1:])
    trailing = () if columns is None else (columns,)
    V = torch.randn(J.shape[1], columns or 1, dtype=J.dtype, generator=torch.Generator().manual_seed(0))
    (JV,) = J @ J.in_layout.unflatten_to_user_list(V, is_vector=columns is None)
    assert JV.shape == (*output_shape, *trailing)
    tolerance = 1e-9 if J.dtype == torch.float64 else 1e-4
    expected = dense @ V
    torch.testing.assert_close(JV.reshape(expected.shape), expected, rtol=tolerance, atol=tolerance)
    back = JT @ [JV]
    assert [tuple(t.shape) for t in back] == [(*p.shape, *trailing) for p in small_problem.param_list]
    flat, _ = J.in_layout.flatten_user_list(back, name="back")
    torch.testing.assert_close(
        flat, dense.T @ expected, rtol=tolerance, atol=tolerance * expected.abs().max()
    )
