"""ssvd on rectangular matrices and a Jacobian, against dense SVDs."""

import pytest
import torch
from spectra import TorchOnly

from curvkit import JacobianLinearOperator
from curvkit.sketch import ssvd

RECOVERIES = ["hmt", "nystrom", "singlepass", "oversampled_40"]


def rectangular(m, n, singular_values, seed=0):
    generator = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(m, len(singular_values), dtype=torch.float64, generator=generator)).Q
    V = torch.linalg.qr(torch.randn(n, len(singular_values), dtype=torch.float64, generator=generator)).Q
    return (U * singular_values) @ V.T


@pytest.mark.parametrize("shape", [(90, 50), (50, 90)])
@pytest.mark.parametrize("recovery", RECOVERIES)
@pytest.mark.parametrize("noise", ["rademacher", "gaussian", "ssrft"])
def test_exactly_low_rank_to_float_precision(shape, recovery, noise):
    s = torch.linspace(5.0, 1.0, 8, dtype=torch.float64)
    A = rectangular(*shape, s)
    U, S, Vh = ssvd(A, "cpu", torch.float64, 20, seed=2, noise_type=noise, recovery_type=recovery)
    assert U.shape == (shape[0], 20) and S.shape == (20,) and Vh.shape == (20, shape[1])
    torch.testing.assert_close((U * S) @ Vh, A, atol=1e-12, rtol=0)
    torch.testing.assert_close(S[:8], s, atol=1e-12, rtol=0)
    torch.testing.assert_close(U.T @ U, torch.eye(20, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(Vh @ Vh.T, torch.eye(20, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("recovery", RECOVERIES)
def test_decaying_spectrum_within_halko_bound(recovery):
    """Mean Frobenius error over six seeds within 2× Halko et al.'s bound (one-pass cores: 20×)."""
    s = 0.7 ** torch.arange(50, dtype=torch.float64)
    A = rectangular(90, 70, s)
    errors = [
        torch.linalg.matrix_norm(A - (U * S) @ Vh)
        for U, S, Vh in (
            ssvd(A, "cpu", torch.float64, 20, seed=seed, noise_type="gaussian", recovery_type=recovery)
            for seed in range(6)
        )
    ]
    bound = min((1 + r / (20 - r - 1)) ** 0.5 * float(s[r:].square().sum().sqrt()) for r in range(19))
    factor = 1 if recovery == "hmt" else (2 if recovery.startswith("over") else 20)
    assert float(sum(errors) / 6) <= factor * bound


@pytest.mark.parametrize("recovery", RECOVERIES)
def test_same_result_for_every_block_size_and_products_counted(recovery):
    A = rectangular(60, 45, 0.8 ** torch.arange(30, dtype=torch.float64))
    reference = ssvd(A, "cpu", torch.float64, 15, seed=1, recovery_type=recovery)
    for width in (1, 4):
        foreign = TorchOnly(A)
        U, S, Vh = result = ssvd(
            foreign, "cpu", torch.float64, 15, seed=1, recovery_type=recovery, meas_blocksize=width
        )
        torch.testing.assert_close(
            (U * S) @ Vh, (reference[0] * reference[1]) @ reference[2], atol=1e-12, rtol=0
        )
        assert result.num_products == foreign.num_columns == 30 + (40 if recovery.startswith("over") else 0)


def test_jacobian():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    data = [(torch.randn(4, 5, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64))]
    J = JacobianLinearOperator(model, list(model.parameters()), data)  # [12, 57]
    U, S, Vh = ssvd(J, "cpu", torch.float64, 12, seed=0)
    dense = J.to_dense()
    torch.testing.assert_close(S, torch.linalg.svdvals(dense), atol=1e-10, rtol=0)
    torch.testing.assert_close((U * S) @ Vh, dense, atol=1e-10, rtol=0)
