"""KFAC's damped inverse: factor damping, the π heuristic, exact damping, caching, Cholesky retry."""

import math

import pytest
import torch
from structured_factors import kfac_blocks, kfac_factors, kfac_params, kfac_reference, psd

from curvkit.structured import KroneckerBlock, KroneckerFactoredLinearOperator, kfac_inverse

DAMPING = 0.3


def _kfac(dtype=torch.float64, factors=None):
    factors = kfac_factors(dtype) if factors is None else factors
    return KroneckerFactoredLinearOperator(kfac_params(dtype), kfac_blocks(factors)), factors


def _eye(matrix):
    return torch.eye(matrix.shape[0], dtype=matrix.dtype)


def _heuristic(factor, role, pair):
    """Martens & Grosse's split, written out: π² = (tr A / dim A) / (tr G / dim G); a bias alone gets δ."""
    G, A = pair
    if role == "bias":
        return factor + DAMPING * _eye(factor)
    pi = math.sqrt((A.trace() / A.shape[0]) / (G.trace() / G.shape[0]))
    damping = math.sqrt(DAMPING) / pi if role == "G" else pi * math.sqrt(DAMPING)
    return factor + damping * _eye(factor)


def _damped_reference(factors, mode):
    """The damped KFAC that each mode inverts, as a dense matrix."""
    if mode == "factors":
        return kfac_reference(factors, lambda factor, role, pair: factor + DAMPING * _eye(factor))
    if mode == "pair":  # (δ_A, δ_G) = (0.1, 0.2); a bias alone gets δ_G
        return kfac_reference(
            factors, lambda factor, role, pair: factor + (0.1 if role == "A" else 0.2) * _eye(factor)
        )
    if mode == "exact":
        reference = kfac_reference(factors)
        return reference + DAMPING * _eye(reference)
    return kfac_reference(factors, _heuristic)


MODES = {
    "factors": {"damping": DAMPING},
    "pair": {"damping": (0.1, 0.2)},
    "heuristic": {"damping": DAMPING, "use_heuristic_damping": True},
    "exact": {"damping": DAMPING, "use_exact_damping": True},
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_inverse_times_damped_operator_is_identity(mode, dtype):
    operator, _ = _kfac(dtype)
    inverse = operator.inverse(**MODES[mode])
    damped = _damped_reference(kfac_factors(torch.float64), mode)
    assert inverse.is_symmetric and inverse.is_psd and inverse.dtype == dtype
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(inverse.to_dense().double() @ damped, _eye(damped), rtol=0, atol=tol)
    X = torch.randn(damped.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close((inverse @ (damped @ X).to(dtype)).double(), X, rtol=0, atol=tol * 10)
    if mode == "exact":  # the damped operator itself is KFAC + δ I
        torch.testing.assert_close(
            damped, operator.to_dense().double() + DAMPING * _eye(damped), rtol=1e-6, atol=1e-6
        )


@pytest.mark.parametrize("mode", sorted(MODES))
def test_inverse_closed_forms(mode):
    operator, factors = _kfac()
    inverse = operator.inverse(**MODES[mode])
    damped = _damped_reference(factors, mode)
    torch.testing.assert_close(inverse.logdet(), -torch.logdet(damped))
    torch.testing.assert_close(inverse.trace(), torch.linalg.inv(damped).trace())
    torch.testing.assert_close(inverse.frobenius_norm(), torch.linalg.matrix_norm(torch.linalg.inv(damped)))


def test_heuristic_with_a_vanishing_factor_still_adds_the_damping():
    """A zero input factor leaves π undefined: both factors get √δ (π = 1), so the block is
    ``√δ G + δ I`` — curvlinops 3.0.1 gives ``δ G + δ² I`` (or divides by zero)."""
    G = psd(3, 0)
    operator = KroneckerFactoredLinearOperator(
        [torch.zeros(3, 2, dtype=torch.float64)],
        [KroneckerBlock((0,), G, torch.zeros(2, 2, dtype=torch.float64))],
    )
    inverse = operator.inverse(damping=DAMPING, use_heuristic_damping=True)
    root = math.sqrt(DAMPING)
    expected = torch.kron(G + root * _eye(G), root * torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(inverse.to_dense() @ expected, torch.eye(6, dtype=torch.float64))


def test_heuristic_respects_min_damping():
    G, A = 1e6 * psd(3, 0), psd(2, 1)  # π ≈ 1e-3: δ_A = π √δ falls below min_damping
    operator = KroneckerFactoredLinearOperator(
        [torch.zeros(3, 2, dtype=torch.float64)], [KroneckerBlock((0,), G, A)]
    )
    inverse = operator.inverse(damping=1e-6, use_heuristic_damping=True, min_damping=1e-2)
    pi = math.sqrt((A.trace() / 2) / (G.trace() / 3))
    expected = torch.kron(
        G + 1e-3 / pi * torch.eye(3, dtype=torch.float64), A + 1e-2 * torch.eye(2, dtype=torch.float64)
    )
    assert pi * 1e-3 < 1e-2
    torch.testing.assert_close(inverse.to_dense() @ expected, torch.eye(6, dtype=torch.float64))


@pytest.mark.parametrize("cache", [True, False])
def test_cache_keeps_the_inverted_factors(cache, monkeypatch):
    calls = []
    original = kfac_inverse.damped_inverse
    monkeypatch.setattr(
        kfac_inverse, "damped_inverse", lambda *args: calls.append(args[3]) or original(*args)
    )
    operator, _ = _kfac()
    inverse = operator.inverse(damping=DAMPING, cache=cache)
    assert calls == []  # inverted when first used
    x = torch.ones(operator.shape[0], dtype=torch.float64)
    first, second = inverse @ x, inverse @ x
    assert torch.equal(first, second)
    per_product = 7  # two factors for three blocks, one for the bias alone
    assert len(calls) == (per_product if cache else 2 * per_product)


def test_failed_float32_cholesky_is_retried_in_float64():
    """An exactly positive definite factor of condition number 10⁸: float32 Cholesky fails."""
    B = torch.randn(30, 25, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    factor = (B @ B.T + 1e-6 * torch.eye(30, dtype=torch.float64)).float()
    factor = (factor + factor.T) / 2
    assert torch.linalg.cholesky_ex(factor).info != 0 and torch.linalg.cholesky_ex(factor.double()).info == 0
    operator = KroneckerFactoredLinearOperator(
        [torch.zeros(30, dtype=torch.float32)], [KroneckerBlock((0,), factor)]
    )
    with pytest.warns(UserWarning, match="retrying in float64"):
        result = operator.inverse() @ torch.ones(30)
    expected = torch.linalg.solve(factor.double(), torch.ones(30, dtype=torch.float64))
    torch.testing.assert_close(result.double(), expected, rtol=1e-4, atol=0)
    with pytest.raises(torch.linalg.LinAlgError, match="not positive definite"):
        operator.inverse(retry_double_precision=False) @ torch.ones(30)


@pytest.mark.parametrize("exact", [False, True])
def test_singular_factor_without_damping_raises(exact):
    operator = KroneckerFactoredLinearOperator(
        [torch.zeros(3, 4, dtype=torch.float64)], [KroneckerBlock((0,), psd(3, 0), psd(4, 1, rank=2))]
    )
    with pytest.raises(torch.linalg.LinAlgError, match=r"blocks\[0\]"):
        operator.inverse(use_exact_damping=exact) @ torch.ones(12, dtype=torch.float64)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"damping": -1e-3}, ValueError, "damping must be a finite non-negative number"),
        ({"damping": math.nan}, ValueError, "damping must be a finite"),
        ({"damping": "1e-3"}, ValueError, "damping must be a finite"),
        ({"damping": (0.1, 0.2, 0.3)}, ValueError, "a pair"),
        ({"damping": (0.1, -0.2)}, ValueError, r"damping\[1\]"),
        ({"damping": (0.1, 0.2), "use_heuristic_damping": True}, ValueError, "one damping value"),
        ({"damping": (0.1, 0.2), "use_exact_damping": True}, ValueError, "one damping value"),
        ({"use_heuristic_damping": True, "use_exact_damping": True}, ValueError, "not both"),
        ({"min_damping": -1.0}, ValueError, "min_damping"),
        ({"use_exact_damping": "yes"}, TypeError, "use_exact_damping must be True or False"),
        ({"cache": 1}, TypeError, "cache must be True or False"),
    ],
)
def test_bad_options(kwargs, error, message):
    operator, _ = _kfac()
    with pytest.raises(error, match=message):
        operator.inverse(**kwargs)


def test_exact_damping_decomposes_float32_factors_in_float64():
    """Eigenvalues from 1e-6 to 1: a float32 ``eigh`` gets the small ones wrong by ~1e-7 absolute, which
    ``(λ + 10⁻⁶)⁻¹`` turns into errors of several percent; the float64 decomposition does not."""
    Q = torch.linalg.qr(torch.randn(40, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[
        0
    ]
    G = ((Q * torch.logspace(-6, 0, 40, dtype=torch.float64)) @ Q.T).float()
    G = (G + G.T) / 2
    operator = KroneckerFactoredLinearOperator(
        [torch.zeros(40, dtype=torch.float32)], [KroneckerBlock((0,), G)]
    )
    inverse = operator.inverse(damping=1e-6, use_exact_damping=True).to_dense().double()
    expected = torch.linalg.inv(G.double() + 1e-6 * torch.eye(40, dtype=torch.float64))
    assert torch.linalg.matrix_norm(inverse - expected) / torch.linalg.matrix_norm(expected) < 1e-3
