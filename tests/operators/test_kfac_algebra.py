"""KFAC's closed forms, inverse and state dict, through the public operator."""

import subprocess
import sys

import pytest
import torch
from kfac_problems import F64, classification_data
from torch import nn

from curvkit import KFACInverseLinearOperator, KFACLinearOperator


def smooth_regression(dtype):
    """Tanh layers and MSE on more samples than any factor's size: every factor is regular."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)
    data = [(X, nn.functional.one_hot(y, 3).to(dtype)) for X, y in classification_data((6, 5), dtype)]
    return model, data


def make_kfac(dtype, fisher_type="type-2"):
    model, data = smooth_regression(dtype)
    return KFACLinearOperator(
        model,
        nn.MSELoss(),
        list(model.parameters()),
        data,
        fisher_type=fisher_type,
        separate_weight_and_bias=False,
    )


@pytest.fixture(params=[F64, torch.float32], ids=["f64", "f32"])
def kfac(request):
    return make_kfac(request.param)


def test_closed_forms_equal_torch_linalg_on_to_dense(kfac):
    dense = kfac.to_dense().to(F64)
    tolerance = {"rtol": 1e-9, "atol": 0} if kfac.dtype == F64 else {"rtol": 1e-4, "atol": 0}
    sign, logabsdet = torch.linalg.slogdet(dense)
    assert sign == 1
    for value, expected in [
        (kfac.trace, dense.trace()),
        (kfac.frobenius_norm, torch.linalg.matrix_norm(dense)),
        (kfac.logdet, logabsdet),
        (kfac.det, torch.linalg.det(dense).to(kfac.dtype).to(F64)),  # float32: underflows to 0
    ]:
        assert isinstance(value, torch.Tensor) and value.dtype == kfac.dtype
        torch.testing.assert_close(value.to(F64), expected, **tolerance)


@pytest.mark.parametrize(
    "damping, options",
    [(1e-9, {}), (1e-22, {"use_heuristic_damping": True, "min_damping": 0.0})],
    ids=["plain", "heuristic"],
)
def test_inverse_times_operator_is_the_identity(damping, options):
    """With the heuristic, each factor gets about ``√δ`` (Martens & Grosse's π split)."""
    kfac = make_kfac(F64)
    inverse = kfac.inverse(damping=damping, **options)
    assert isinstance(inverse, KFACInverseLinearOperator)
    same = KFACInverseLinearOperator(kfac, damping, **options)
    x = torch.randn(kfac.shape[1], 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(inverse @ x, same @ x, rtol=0, atol=0)
    product = inverse.to_dense() @ kfac.to_dense()
    torch.testing.assert_close(product, torch.eye(kfac.shape[0], dtype=F64), atol=1e-5, rtol=0)


def test_exact_damping_inverts_the_damped_operator(kfac):
    inverse = kfac.inverse(damping=1e-2, use_exact_damping=True).to_dense().to(F64)
    damped = kfac.to_dense().to(F64) + 1e-2 * torch.eye(kfac.shape[0], dtype=F64)
    tolerance = 1e-9 if kfac.dtype == F64 else 1e-3
    torch.testing.assert_close(inverse @ damped, torch.eye(kfac.shape[0], dtype=F64), atol=tolerance, rtol=0)


def test_state_dict_round_trip_in_a_fresh_process(kfac, tmp_path):
    path = tmp_path / "kfac.pt"
    torch.save(kfac.state_dict(), path)
    code = (
        f"import torch; state = torch.load({str(path)!r}, weights_only=True); "
        "print(state['fisher_type'], state['factors']['format'])"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["type-2", "curvkit.KroneckerFactoredLinearOperator/1"]
    state = torch.load(path, weights_only=True)
    model, data = smooth_regression(kfac.dtype)
    rebuilt = KFACLinearOperator.from_state_dict(state, model, list(model.parameters()), data)
    torch.testing.assert_close(rebuilt.to_dense(), kfac.to_dense(), rtol=0, atol=0)
    other = make_kfac(kfac.dtype)
    other.load_state_dict(state)
    torch.testing.assert_close(other.to_dense(), kfac.to_dense(), rtol=0, atol=0)


def test_load_state_dict_refuses_other_settings(kfac):
    other = make_kfac(kfac.dtype, fisher_type="empirical")
    with pytest.raises(ValueError, match="fisher_type 'type-2'"):
        other.load_state_dict(kfac.state_dict())
    with pytest.raises(ValueError, match="state_dict must be a KFACLinearOperator's"):
        other.load_state_dict({"format": "something else"})


def test_factors_are_computed_once_and_eagerly_on_request(kfac):
    kfac.compute_kronecker_factors()
    factored = kfac.factored
    kfac @ torch.ones(kfac.shape[1], dtype=kfac.dtype)
    kfac.trace  # noqa: B018
    assert kfac.factored is factored
