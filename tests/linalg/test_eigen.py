"""Eigenpairs: thick-restart Lanczos and power iteration against torch.linalg.eigh."""

from __future__ import annotations

import pytest
import torch
from linalg_matrices import CountingOperator, generator, low_rank_plus_noise, random_symmetric, with_spectrum
from scipy.sparse.linalg import aslinearoperator

from curvkit.linalg import lanczos_eigsh, power_iteration


def assert_eigenpairs(A, values, vectors, expected_values, atol=1e-8):
    torch.testing.assert_close(values, expected_values, atol=atol, rtol=0)
    torch.testing.assert_close(A @ vectors, vectors * values, atol=1e-5 * float(values.abs().max()), rtol=0)
    torch.testing.assert_close(
        vectors.T @ vectors, torch.eye(values.numel(), dtype=values.dtype), atol=1e-8, rtol=0
    )


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
@pytest.mark.parametrize("k, ncv", [(1, None), (5, None), (4, 10)])
def test_agrees_with_eigh(which, k, ncv):
    A = random_symmetric(150, seed=2)
    values, vectors = lanczos_eigsh(A, k, which=which, tol=1e-9, ncv=ncv, seed=0)
    all_values = torch.linalg.eigvalsh(A)
    expected = {
        "LA": all_values[-k:],
        "SA": all_values[:k],
        "LM": all_values[all_values.abs().argsort()[-k:]].sort().values,
    }[which]
    assert_eigenpairs(A, values, vectors, expected)


def test_eigenvectors_match_up_to_sign():
    A = with_spectrum(torch.cat([torch.linspace(0, 1, 95), torch.tensor([2.0, 3.0, 4.0, 5.0, 6.0])]).double())
    values, vectors = lanczos_eigsh(A, 3, tol=1e-10, seed=1)
    expected_values, expected_vectors = torch.linalg.eigh(A)
    torch.testing.assert_close(values, expected_values[-3:])
    overlaps = (vectors * expected_vectors[:, -3:]).sum(0).abs()
    torch.testing.assert_close(overlaps, torch.ones(3, dtype=torch.float64))


def test_restarts_keep_the_number_of_vectors_bounded():
    A = CountingOperator(random_symmetric(300, seed=3), symmetric=True)
    values, _ = lanczos_eigsh(A, 2, ncv=8, tol=1e-8, seed=0)
    torch.testing.assert_close(values, torch.linalg.eigvalsh(A.matrix)[-2:])
    assert A.num_columns == A.num_calls + 1  # one vector per product, the final Rayleigh–Ritz two


def test_multiple_eigenvalues_and_identity():
    A = torch.diag(torch.cat([torch.full((3,), 3.0), torch.linspace(0, 1, 40)])).double()
    values, _ = lanczos_eigsh(A, 3, seed=0)
    torch.testing.assert_close(values, torch.full((3,), 3.0, dtype=torch.float64))
    values, vectors = lanczos_eigsh(torch.eye(30, dtype=torch.float64), 4, seed=0)
    torch.testing.assert_close(values, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(4, dtype=torch.float64))


def _spectrum(*parts) -> torch.Tensor:
    return torch.cat([torch.as_tensor(part, dtype=torch.float64) for part in parts])


def _rank_five_psd() -> torch.Tensor:
    """``JᵀJ`` for ``J ∈ ℝ⁵ˣ²⁰⁰``: eigenvalue 0 with multiplicity 195, like a Gauss-Newton matrix."""
    J = torch.randn(5, 200, dtype=torch.float64, generator=generator(0))
    return J.T @ J


REPEATED = {
    "5-fold top": lambda: with_spectrum(_spectrum([10.0] * 5, torch.linspace(0, 9, 195))),
    "5-fold bottom": lambda: with_spectrum(_spectrum([-10.0] * 5, torch.linspace(-9, 9, 195))),
    "195-fold zero": _rank_five_psd,
    "clusters of 4": lambda: with_spectrum(
        _spectrum([10.0] * 4, [9.0] * 4, [8.0] * 4, torch.linspace(0, 7, 188))
    ),
    "290-fold bulk": low_rank_plus_noise,
    "breakdowns": lambda: with_spectrum(_spectrum([10.0] * 5, [1.0, 2.0, 3.0, 4.0, 5.0], [0.5] * 40)),
}


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
@pytest.mark.parametrize("k", [5, 9])
@pytest.mark.parametrize("spectrum", REPEATED)
def test_repeated_eigenvalues_agree_with_eigh(spectrum, k, which):
    """A single Krylov space sees one copy of each eigenvalue; locking finds the others."""
    A = REPEATED[spectrum]()
    values, vectors = lanczos_eigsh(A, k, which=which, seed=0)
    all_values = torch.linalg.eigvalsh(A)
    scale = float(all_values.abs().max())
    if which == "LM":  # compare magnitudes: ± pairs of equal magnitude may tie
        torch.testing.assert_close(
            values.abs().sort().values, all_values.abs().sort().values[-k:], atol=1e-8 * scale, rtol=0
        )
    else:
        torch.testing.assert_close(
            values, all_values[-k:] if which == "LA" else all_values[:k], atol=1e-8 * scale, rtol=0
        )
    residuals = torch.linalg.vector_norm(A @ vectors - vectors * values, dim=0)
    assert float(residuals.max()) <= (k + 1) * 1e-6 * scale
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(k, dtype=torch.float64), atol=1e-10, rtol=0)


def test_null_space_is_filled_from_one_probe():
    """After the Krylov space of a rank-5 matrix breaks down, one random probe shows ``A = 0`` on the rest."""
    A = CountingOperator(_rank_five_psd(), symmetric=True)
    values, vectors = lanczos_eigsh(A, 5, which="SA", seed=0)
    assert float(values.abs().max()) < 1e-10
    assert float((A.matrix @ vectors).abs().max()) < 1e-10
    # 6 Krylov vectors (5 eigenvalues and 0), a rounding step, the probe; the final Rayleigh–Ritz 5
    assert A.num_columns <= 8 + 5


def test_multiplicity_check_can_be_skipped_for_speed():
    """Without the check: the first run's answer, fewer products, and a 5-fold eigenvalue may lose copies."""
    distinct = CountingOperator(random_symmetric(150), symmetric=True)
    checked = lanczos_eigsh(distinct, 6, seed=0)[0]
    checked_products, distinct.num_columns = distinct.num_columns, 0
    torch.testing.assert_close(lanczos_eigsh(distinct, 6, seed=0, check_multiplicity=False)[0], checked)
    assert distinct.num_columns < 0.8 * checked_products
    repeated = with_spectrum(_spectrum([10.0] * 5, torch.linspace(0, 9, 195)))
    unchecked = lanczos_eigsh(repeated, 5, seed=0, check_multiplicity=False)[0]
    assert int((unchecked - 10.0).abs().lt(1e-6).sum()) < 5  # the trade-off the docstring states
    assert bool((lanczos_eigsh(repeated, 5, seed=0)[0] - 10.0).abs().lt(1e-6).all())


def test_largest_magnitude_needs_room_for_both_ends():
    """A basis of k + 2 vectors accepted 5.0, 4.94 and -4.5 as the 3 largest magnitudes (not 4.87)."""
    A = with_spectrum(torch.linspace(-4.5, 5.0, 150, dtype=torch.float64))
    with pytest.raises(ValueError, match="which='LM' needs ncv ≥ 2k \\+ 1 = 7"):
        lanczos_eigsh(A, 3, which="LM", ncv=5, seed=0)
    values = lanczos_eigsh(A, 3, which="LM", ncv=7, seed=0)[0]
    torch.testing.assert_close(values, torch.linalg.eigvalsh(A)[-3:], atol=1e-8, rtol=0)


def test_seeded_results_do_not_depend_on_the_default_dtype():
    """Restart vectors (after breakdowns) are drawn in the operator's dtype."""
    A = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0, 3.0], dtype=torch.float64))
    default = torch.get_default_dtype()
    results = []
    for dtype in (torch.float32, torch.float64):
        torch.set_default_dtype(dtype)
        try:
            results.append(lanczos_eigsh(A, 4, which="SA", seed=0))
        finally:
            torch.set_default_dtype(default)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_every_run_counts_towards_max_matvecs():
    A = with_spectrum(_spectrum([10.0] * 5, torch.linspace(0, 9, 195)))
    counting = CountingOperator(A, symmetric=True)
    lanczos_eigsh(counting, 5, seed=0)
    needed = counting.num_columns
    counting = CountingOperator(A, symmetric=True)
    with pytest.raises(RuntimeError, match="search of their complement for further copies"):
        lanczos_eigsh(counting, 5, seed=0, max_matvecs=needed - 1)
    assert counting.num_columns == needed - 1 - 5  # k = 5 left for the final Rayleigh–Ritz


def test_full_dimension_and_foreign_inputs():
    A = random_symmetric(12)
    values, _ = lanczos_eigsh(aslinearoperator(A.numpy()), 12, seed=0)
    torch.testing.assert_close(values, torch.linalg.eigvalsh(A))
    values, _ = lanczos_eigsh(A.numpy(), 2, which="SA", seed=0)
    torch.testing.assert_close(values, torch.linalg.eigvalsh(A)[:2])


def test_eigsh_errors():
    A = random_symmetric(20)
    for kwargs, match in [
        ({"k": 0}, "k must be"),
        ({"k": 21}, "k must be at most"),
        ({"which": "BE"}, "which must be one of"),
        ({"tol": -1.0}, "tol must be"),
        ({"ncv": 3, "k": 3}, "ncv must satisfy"),
        ({"ncv": 21}, "ncv must satisfy"),
        ({"max_matvecs": 0}, "max_matvecs must be"),
    ]:
        with pytest.raises(ValueError, match=match):
            lanczos_eigsh(A, **{"k": 2, **kwargs})
    with pytest.raises(ValueError, match="A must be a square operator"):
        lanczos_eigsh(torch.zeros(3, 4), 1)
    with pytest.raises(RuntimeError, match="did not converge to tol=1e-12 within max_matvecs=15"):
        lanczos_eigsh(random_symmetric(200), 3, ncv=10, tol=1e-12, max_matvecs=15, seed=0)
    with pytest.raises(RuntimeError, match="NaN"):
        lanczos_eigsh(torch.full((5, 5), float("nan")), 1, seed=0)


def test_power_iteration():
    A = with_spectrum(torch.cat([torch.linspace(-1, 1, 50), torch.tensor([4.0])]).double())
    value, vector = power_iteration(A, tol=1e-8, seed=0)
    assert float(value) == pytest.approx(4.0, rel=1e-8)
    torch.testing.assert_close(A @ vector, value * vector, atol=1e-7, rtol=0)
    assert float(power_iteration(-A, tol=1e-8, seed=0)[0]) == pytest.approx(-4.0)
    assert float(power_iteration(torch.zeros(4, 4), seed=0)[0]) == 0.0


@pytest.mark.parametrize("scale", [1e-9, 1e9])
def test_power_iteration_tolerance_is_relative_to_the_eigenvalue(scale):
    """The same relative accuracy for operators of any norm (an absolute residual test accepts
    the first vector when ``‖A‖ ≈ 10⁻⁹`` and never stops when ``‖A‖ ≈ 10⁹``)."""
    A = scale * with_spectrum(torch.cat([torch.linspace(-1, 1, 50), torch.tensor([4.0])]).double())
    value, vector = power_iteration(A, tol=1e-8, seed=0)
    assert float(value) == pytest.approx(4.0 * scale, rel=1e-8)
    assert float(torch.linalg.vector_norm(A @ vector - value * vector)) <= 1e-8 * 4.0 * scale


def test_power_iteration_errors():
    with pytest.raises(RuntimeError, match="did not converge to tol=1e-10 within max_iterations=3"):
        power_iteration(random_symmetric(50), tol=1e-10, max_iterations=3, seed=0)
    with pytest.raises(ValueError, match="max_iterations must be"):
        power_iteration(torch.eye(3), max_iterations=0)
    with pytest.raises(ValueError, match="tol must be"):
        power_iteration(torch.eye(3), tol=-1.0)
    with pytest.raises(ValueError, match="A must be a square operator"):
        power_iteration(torch.zeros(3, 4))
    with pytest.raises(RuntimeError, match="NaN"):
        power_iteration(torch.full((3, 3), float("nan")), seed=0)
