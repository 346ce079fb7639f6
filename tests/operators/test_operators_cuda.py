"""Every operator on a CUDA device: the CPU's matrix, computed and returned on the device.

Skipped without CUDA (``device`` fixture in ``conftest.py``; ``CURVKIT_TEST_DEVICE=cpu`` runs
these checks on the CPU). Deterministic operators are compared with the CPU's dense references;
the MC-Fisher draws its targets on the device, so its reference is built there from the same
seed.
"""

import numpy
import pytest
import torch
from contract import LinearOperatorContract
from scipy.sparse.linalg import aslinearoperator, cg, eigsh
from test_curvature import OPERATORS, assert_matches, build
from test_layer_chain import _pooled, _problem
from torch import nn
from zoo import PROBLEM_IDS, SMALL_PROBLEM_IDS, make_problem_from_id

from curvkit import (
    HessianLinearOperator,
    JacobianLinearOperator,
    TransposedJacobianLinearOperator,
    ggn_diagonal,
    reference,
)
from curvkit.operators._layer_factors import LayerFactorization
from curvkit.operators._shortcut import AgreementCheck

pytestmark = pytest.mark.cuda


def _device_reference(kind, problem, reference_of):
    """The dense matrix an operator on ``problem`` (already on the device) must equal, on the CPU."""
    if kind != "fisher_mc":
        return reference_of(problem.name, kind)
    p = problem
    return reference.fisher_mc_matrix(p.model, p.loss_func, p.params, p.data, p.batch_size_fn).cpu()


@pytest.mark.parametrize("problem_id", PROBLEM_IDS)
@pytest.mark.parametrize("kind", sorted(OPERATORS))
def test_matches_reference(kind, problem_id, device, reference_of):
    problem = make_problem_from_id(problem_id).to(device)
    operator = build(kind, problem)
    assert operator.device == device
    expected = _device_reference(kind, problem, reference_of)
    dense = operator.to_dense()
    assert dense.device == device
    assert_matches(dense.cpu(), expected, problem.dtype)
    vector = torch.randn(problem.dim, dtype=problem.dtype, generator=torch.Generator().manual_seed(0))
    product = operator @ vector.to(device)
    assert product.device == device
    assert_matches(product.cpu(), expected.to(problem.dtype) @ vector, problem.dtype)


@pytest.mark.parametrize("problem_id", SMALL_PROBLEM_IDS)
@pytest.mark.parametrize("kind", sorted(OPERATORS))
def test_cached_batches_and_host_data(kind, problem_id, device, reference_of):
    """The batch cache works on the device; data left on the CPU is moved batch by batch."""
    problem = make_problem_from_id(problem_id)
    host_data = problem.data
    problem = problem.to(device)
    expected = _device_reference(kind, problem, reference_of)
    cached = build(kind, problem, cache_batches=True)
    for _ in range(2):  # the first product fills the cache, the second reads it
        assert_matches(cached.to_dense().cpu(), expected, problem.dtype)
    p = problem
    from_host = OPERATORS[kind](p.model, p.loss_func, p.params, host_data, batch_size_fn=p.batch_size_fn)
    assert from_host.device == device
    assert_matches(from_host.to_dense().cpu(), expected, problem.dtype)


@pytest.mark.parametrize("problem_id", SMALL_PROBLEM_IDS)
def test_hessian_blocks(problem_id, device, reference_of):
    problem = make_problem_from_id(problem_id).to(device)
    sizes = [p.numel() for p in problem.param_list]
    if len(sizes) < 2:
        pytest.skip("one parameter tensor: no blocks")
    boundary = sizes[0]
    H = build("hessian", problem, block_sizes=[1, len(sizes) - 1])
    full = reference_of(problem.name, "hessian")
    expected = torch.zeros_like(full)
    expected[:boundary, :boundary] = full[:boundary, :boundary]
    expected[boundary:, boundary:] = full[boundary:, boundary:]
    assert_matches(H.to_dense().cpu(), expected, problem.dtype)


@pytest.mark.parametrize("problem_id", SMALL_PROBLEM_IDS)
def test_jacobians(problem_id, device, reference_of):
    problem = make_problem_from_id(problem_id).to(device)
    p = problem
    expected = reference_of(problem.name, "jacobian")
    tolerance = {"rtol": 1e-10, "atol": 1e-10 * expected.abs().max().item()}
    for cls, matrix in ((JacobianLinearOperator, expected), (TransposedJacobianLinearOperator, expected.T)):
        operator = cls(p.model, p.params, p.data, batch_size_fn=p.batch_size_fn)
        dense = operator.to_dense()
        assert dense.device == device
        torch.testing.assert_close(dense.cpu(), matrix, **tolerance)


@pytest.mark.parametrize("problem_id", SMALL_PROBLEM_IDS)
def test_ggn_diagonal(problem_id, device, reference_of):
    """Exact (the nn.Linear shortcut and the per-sample path) and MC, against the dense matrices."""
    p = make_problem_from_id(problem_id).to(device)
    exact = ggn_diagonal(p.model, p.loss_func, p.params, p.data, batch_size_fn=p.batch_size_fn)
    assert exact.device == device
    expected = reference_of(p.name, "ggn").diagonal()
    torch.testing.assert_close(exact.cpu(), expected, rtol=1e-9, atol=1e-12 * expected.abs().max().item())
    mc = ggn_diagonal(
        p.model, p.loss_func, p.params, p.data, batch_size_fn=p.batch_size_fn, mode="mc", mc_samples=2, seed=3
    )
    fisher = build("fisher_mc", p, mc_samples=2, seed=3).to_dense().diagonal()
    torch.testing.assert_close(mc, fisher, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("problem_id", ["mlp-ce-mean-three-list", "cnn-mse-sum-three-list"])
def test_shortcuts_on_the_device(problem_id, device, reference_of, monkeypatch):
    """The layer chain's Hessian and the layer factors (forced on the small CNN) on the device,
    without the agreement check that would replace a wrong product."""
    monkeypatch.setattr(AgreementCheck, "checked", lambda self, result, general: result)
    monkeypatch.setattr(LayerFactorization, "worth_it", lambda self, num_columns: True)
    problem = make_problem_from_id(problem_id).to(device)
    hessian, ggn = build("hessian", problem), build("ggn", problem)
    assert hessian._layer_chain is not None
    for kind, operator in (("hessian", hessian), ("ggn", ggn)):
        assert_matches(operator.to_dense().cpu(), reference_of(problem.name, kind), problem.dtype)
    assert ggn._layer_factorization.applicable


@pytest.mark.parametrize("kind", ["lenet", "pool-then-activation"])
def test_pooling_chain_on_the_device(kind, device, monkeypatch):
    """Max and average pooling in a layer chain, on the device, against the CPU's reference."""
    monkeypatch.setattr(AgreementCheck, "checked", lambda self, result, general: result)
    model, input_shape = _pooled(kind)
    model, loss_func, data = _problem(model, num_inputs=input_shape)
    expected = reference.hessian_matrix(model, loss_func, list(model.parameters()), data).detach()
    model = model.to(device)
    data = [(X.to(device), y.to(device)) for X, y in data]
    operator = HessianLinearOperator(model, loss_func, list(model.parameters()), data)
    assert operator._layer_chain is not None
    assert_matches(operator.to_dense().cpu(), expected, torch.float64)


def test_scipy_solvers_on_a_device_operator(device, reference_of):
    """SciPy's eigsh and cg see NumPy arrays; the products run on the device."""
    problem = make_problem_from_id("cnn-ce-mean-one-dict").to(device)
    G = build("ggn", problem)
    dense = reference_of(problem.name, "ggn").numpy()
    top = eigsh(G.to_scipy(), k=3, which="LA", return_eigenvectors=False)
    numpy.testing.assert_allclose(numpy.sort(top), numpy.linalg.eigvalsh(dense)[-3:], rtol=1e-8, atol=1e-12)
    right_hand_side = numpy.random.default_rng(0).standard_normal(problem.dim)
    damping = 1e-2
    damped_ggn = G.to_scipy() + aslinearoperator(damping * numpy.eye(problem.dim))
    solution, info = cg(damped_ggn, right_hand_side, rtol=1e-12)
    assert info == 0
    expected = numpy.linalg.solve(dense + damping * numpy.eye(problem.dim), right_hand_side)
    numpy.testing.assert_allclose(solution, expected, rtol=1e-6, atol=1e-8)


def test_determinism_probe_on_the_device(device):
    """The probe passes for a deterministic model and still catches dropout on the device."""
    problem = make_problem_from_id("transformer-ceseq-mean-three-list").to(device)
    problem.model.train()  # dropout 0: deterministic, and the default fused attention kernels
    build("hessian", problem)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2)).double().to(device)
    data = [(torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 2, (6,)))]
    with pytest.raises(RuntimeError, match="check_deterministic: model_func is not deterministic"):
        OPERATORS["ggn"](model, nn.CrossEntropyLoss(), list(model.parameters()), data)


@pytest.fixture(
    params=[("hessian", "mlp-ce-mean-three-list"), ("ggn", "cnn-mse-mean-three-dict-f32")],
    ids=lambda case: "-".join(case),
)
def device_case(request, device, reference_of):
    kind, problem_id = request.param
    problem = make_problem_from_id(problem_id).to(device)
    return build(kind, problem), reference_of(problem_id, kind).to(device)


class TestDeviceOperatorContract(LinearOperatorContract):
    """Vectors, matrices, NumPy arrays, tensor lists, transposes, algebra, SciPy export on the device."""

    @pytest.fixture
    def operator(self, device_case):
        return device_case[0]

    @pytest.fixture
    def dense(self, device_case):
        return device_case[1]


@pytest.mark.parametrize("kind", sorted(OPERATORS))
def test_products_do_not_synchronize(kind, device):
    """With data on the host, a product never waits for the device (``set_sync_debug_mode``
    raises on every synchronizing call); ``tests/operators/test_synchronization.py`` checks the
    same on the CPU."""
    if device.type != "cuda":
        pytest.skip("synchronization is a CUDA notion")
    problem = make_problem_from_id("mlp-ce-mean-three-list")
    host_data = problem.data
    problem = problem.to(device)
    p = problem
    operator = OPERATORS[kind](p.model, p.loss_func, p.params, host_data)
    vector = torch.randn(problem.dim, dtype=problem.dtype, device=device)
    operator @ vector  # warm up
    torch.cuda.set_sync_debug_mode("error")
    try:
        operator @ vector
        operator @ torch.randn(problem.dim, 3, dtype=problem.dtype, device=device)
    finally:
        torch.cuda.set_sync_debug_mode("default")
