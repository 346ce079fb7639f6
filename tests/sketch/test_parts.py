"""Noise, the SSRFT, CompositeLinOp and DiagonalLinOp, and the re-exported import paths."""

import numpy
import pytest
import scipy.fft
import torch

import curvkit.sketch as sketch
from curvkit import IdentityLinearOperator
from curvkit.sketch import a_posteriori, algorithms, linops, utils
from curvkit.sketch._small import sorted_eigh
from curvkit.sketch.ssrft import SSRFTLinOp, dct, idct


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1001])
def test_dct_is_scipys_orthonormal_dct_and_idct_inverts_it(n):
    x = torch.randn(n, 3, dtype=torch.float64)
    numpy.testing.assert_allclose(dct(x).numpy(), scipy.fft.dct(x.numpy(), axis=0, norm="ortho"), atol=1e-12)
    torch.testing.assert_close(idct(dct(x)), x, atol=1e-12, rtol=0)


def test_ssrft_has_orthonormal_columns_and_its_columns_are_its_products():
    S = SSRFTLinOp((40, 15), seed=3, dtype=torch.float64)
    dense = S @ torch.eye(15, dtype=torch.float64)
    torch.testing.assert_close(dense.T @ dense, torch.eye(15, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(
        S.columns(4, 9), dense[:, 4:9], atol=1e-15, rtol=0
    )  # FFTs of other widths round apart
    torch.testing.assert_close(torch.eye(40, dtype=torch.float64) @ S, dense)  # x @ S, S.T
    torch.testing.assert_close(S.T @ torch.eye(40, dtype=torch.float64), dense.T)
    assert not torch.equal(
        dense, SSRFTLinOp((40, 15), seed=4, dtype=torch.float64) @ torch.eye(15, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="k ≤ n"):
        SSRFTLinOp((3, 4))


def test_noise_is_repeatable_and_distributed():
    x = utils.gaussian_noise((200, 50), mean=2.0, std=3.0, seed=1, dtype=torch.float32)
    assert x.dtype == torch.float32 and torch.equal(
        x, sketch.gaussian_noise((200, 50), 2.0, 3.0, seed=1, dtype=torch.float32)
    )
    assert abs(float(x.mean()) - 2.0) < 0.1 and abs(float(x.std()) - 3.0) < 0.1
    signs = utils.rademacher_noise((100, 30), seed=2)
    assert signs.dtype == torch.int64 and set(signs.unique().tolist()) == {-1, 1}
    assert abs(float(signs.double().mean())) < 0.05
    assert not torch.equal(signs, utils.rademacher_noise((100, 30), seed=3))


def test_composite_and_diagonal_interoperate_with_curvkit_operators():
    Q = torch.linalg.qr(torch.randn(6, 3, dtype=torch.float64)).Q
    d = torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    op = linops.CompositeLinOp([("Q", Q), ("Lbd", linops.DiagonalLinOp(d)), ("Qt", Q.T)])
    dense = (Q * d) @ Q.T
    x = torch.randn(6, 2, dtype=torch.float64)
    assert op.shape == (6, 6) and repr(op) == "Q @ Lbd @ Qt"
    torch.testing.assert_close(op @ x, dense @ x)
    torch.testing.assert_close(x.T @ op, x.T @ dense)
    torch.testing.assert_close(op.T @ x, dense.T @ x)
    torch.testing.assert_close((op + IdentityLinearOperator(6)) @ x, dense @ x + x)
    torch.testing.assert_close(linops.DiagonalLinOp(d).to_matrix(), torch.diag(d))
    with pytest.raises(ValueError, match="named_operators"):
        linops.CompositeLinOp([Q, Q.T])
    with pytest.raises(ValueError, match="Cannot multiply"):
        linops.CompositeLinOp([("Q", Q), ("Q", Q)])


def test_import_paths_are_the_packages_functions():
    assert algorithms.seigh is sketch.seigh and algorithms.ssvd is sketch.ssvd
    assert a_posteriori.apost_error is sketch.apost_error and a_posteriori.scree_bounds is sketch.scree_bounds
    assert (
        linops.CompositeLinOp is sketch.CompositeLinOp and utils.rademacher_noise is sketch.rademacher_noise
    )


def test_cores_are_symmetrized_before_eigh():
    """eigh reads one triangle; a core that is symmetric only up to rounding is averaged first."""
    S = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    C = S + torch.tensor([[0.0, 0.3], [-0.3, 0.0]], dtype=torch.float64)  # S plus an antisymmetric part
    values, _ = sorted_eigh(C, by_mag=False)
    torch.testing.assert_close(values, torch.linalg.eigvalsh(S).flip(0))
