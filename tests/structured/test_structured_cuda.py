"""KFAC's and EKFAC's algebra on a CUDA device give the CPU's results, on the device.

Skipped without CUDA (``device`` fixture in ``conftest.py``); ``CURVKIT_TEST_DEVICE=cpu`` runs
them on the CPU to check the tests themselves.
"""

import io

import pytest
import torch
from structured_factors import generator, kfac_blocks, kfac_factors, kfac_params

from curvkit.structured import KroneckerFactoredLinearOperator

pytestmark = pytest.mark.cuda

INVERSES = {
    "factors": {"damping": 0.1},
    "heuristic": {"damping": 0.1, "use_heuristic_damping": True},
    "exact": {"damping": 0.1, "use_exact_damping": True},
}


def _kfac(device):
    params = [p.to(device) for p in kfac_params()]
    return KroneckerFactoredLinearOperator(params, kfac_blocks(kfac_factors()))


def _everything(kfac, device):
    """Products, inverses, closed forms and EKFAC of ``kfac``, as CPU tensors."""
    X = torch.randn(kfac.shape[0], 3, generator=generator(0), dtype=torch.float64).to(device)
    results = {
        "product": kfac @ X,
        "trace": kfac.trace(),
        "logdet": kfac.logdet(),
        "fro": kfac.frobenius_norm(),
    }
    for name, kwargs in INVERSES.items():
        inverse = kfac.inverse(**kwargs)
        results[f"inverse {name}"] = inverse @ X
        results[f"inverse {name} logdet"] = inverse.logdet()
    corrections = kfac.eigenvalue_corrections()
    g = torch.randn(4, 2, 4, generator=generator(1), dtype=torch.float64).to(device)
    a = torch.randn(4, 2, 9, generator=generator(2), dtype=torch.float64).to(device)
    corrections.add(0, g, a)
    corrections.add(1, g[:, 0, :3], a[:, 0, :5])
    corrections.add(2, g[:, 0, :3])
    corrections.add(3, g[:, :, :3], torch.tensor([[0, 5], [1, 1], [2, 3], [4, 0]], device=device))
    ekfac = corrections.result()
    results["ekfac"] = ekfac @ X
    results["ekfac inverse"] = ekfac.inverse(0.1) @ X
    buffer = io.BytesIO()
    torch.save(kfac.state_dict(), buffer)
    buffer.seek(0)
    results["loaded"] = (
        KroneckerFactoredLinearOperator.from_state_dict(torch.load(buffer, weights_only=True)) @ X
    )
    for name, value in results.items():
        assert value.device == kfac.device, name
    return {name: value.cpu() for name, value in results.items()}


def test_kfac_and_ekfac_on_the_device_match_the_cpu(device):
    kfac = _kfac(device)
    assert kfac.device == device and kfac.blocks[0].output_factor.device == device
    on_device, on_cpu = _everything(kfac, device), _everything(_kfac("cpu"), "cpu")
    for name in on_cpu:
        torch.testing.assert_close(on_device[name], on_cpu[name], rtol=1e-10, atol=1e-12, msg=name)
