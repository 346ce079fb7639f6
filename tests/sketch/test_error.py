"""apost_error against exact Frobenius norms, its spread against apost_error_bounds, and scree bounds."""

import math

import pytest
import torch
from spectra import symmetric_matrix

from curvkit.sketch import CompositeLinOp, DiagonalLinOp, apost_error, apost_error_bounds, scree_bounds, seigh


def test_estimates_are_unbiased_over_many_seeds():
    """Mean of 300 estimates (s = 5) within four standard errors of ‖A‖²_F, ‖Â‖²_F and ‖A − Â‖²_F."""
    A, _ = symmetric_matrix("slow_decay", n=60)
    ews, evs = seigh(A, "cpu", torch.float64, 10, seed=0)
    approx = (evs * ews) @ evs.T
    s, trials = 5, 300
    estimates = torch.stack(
        [
            torch.stack(apost_error(A, approx, "cpu", torch.float64, num_meas=s, seed=t)[0])
            for t in range(trials)
        ]
    )
    for index, M in enumerate([A, approx, A - approx]):
        gram = M.T @ M
        exact = float(torch.trace(gram))
        standard_error = math.sqrt(
            2 * float(torch.linalg.matrix_norm(gram) ** 2) / s / trials
        )  # Var(ωᵀGω) = 2‖G‖²_F
        assert abs(float(estimates[:, index].mean()) - exact) <= 4 * standard_error


def test_per_measurement_values_and_their_means():
    A, _ = symmetric_matrix("fast_decay", n=40)
    (f1, f2, err), (F1, F2, E) = result = apost_error(
        A, 0.5 * A, "cpu", torch.float64, num_meas=7, seed=3, meas_blocksize=2
    )
    assert F1.shape == F2.shape == E.shape == (7,) and result.num_products == 7
    torch.testing.assert_close(F2, 0.25 * F1)
    torch.testing.assert_close(E, 0.25 * F1)
    torch.testing.assert_close(torch.stack([f1, f2, err]), torch.stack([F1.mean(), F2.mean(), E.mean()]))
    again = apost_error(A, 0.5 * A, "cpu", torch.float64, num_meas=7, seed=3, meas_blocksize=None)
    torch.testing.assert_close(again[1][0], F1, atol=1e-12, rtol=0)  # the same vectors in any block size


@pytest.mark.parametrize(("s", "eps"), [(5, 0.5), (10, 0.5), (30, 0.3), (30, 0.5)])
def test_bounds_hold_for_a_simulated_rank_one_error(s, eps):
    """A rank-one error attains the bounds' worst case: estimates are ‖e‖² χ²_s / s."""
    e = torch.zeros(30, 30, dtype=torch.float64)
    e[0, 0] = 2.0
    trials = 2000
    generator = torch.Generator().manual_seed(0)
    estimates = torch.tensor(
        [
            float(apost_error(e, torch.zeros_like(e), "cpu", torch.float64, num_meas=s, seed=generator)[0][2])
            for _ in range(trials)
        ]
    )
    bounds = apost_error_bounds(s, eps)
    for probability, bound in [
        ((estimates <= (1 - eps) * 4).double().mean(), bounds.lower),
        ((estimates >= (1 + eps) * 4).double().mean(), bounds.higher),
    ]:
        slack = 3 * math.sqrt(bound * (1 - bound) / trials) + 1e-3
        assert float(probability) <= bound + slack
        assert bound <= 12 * float(probability) + 0.02  # a Chernoff bound: loose, but not vacuous


def test_bounds_formula_and_skerch_keys():
    bounds = apost_error_bounds(5, 0.5)
    assert bounds.lower == pytest.approx((math.exp(0.5) * 0.5) ** 2.5)
    assert bounds.higher == pytest.approx((math.exp(-0.5) * 1.5) ** 2.5)
    assert bounds["LOWER: P(err<=0.5x)"] == bounds.lower and bounds["HIGHER: P(err>=1.5x)"] == bounds.higher
    assert list(bounds) == ["LOWER: P(err_sq<=0.5x)", "HIGHER: P(err_sq>=1.5x)"]
    assert apost_error_bounds(5, 0.5, is_complex=True).lower == pytest.approx(bounds.lower**2)
    with pytest.raises(KeyError):
        bounds["other"]


def test_sketch_and_test_draw_independent_vectors_from_one_seed():
    """The tutorial's pattern with one integer: the test's vectors are not the sketch's."""
    n = 50
    seen = {}

    class Recording:
        shape = (n, n)

        def __matmul__(self, X):
            seen.setdefault("first", X.clone())
            return X

        def __rmatmul__(self, X):
            return X

    seigh(Recording(), "cpu", torch.float64, 5, seed=11, noise_type="gaussian", recovery_type="nystrom")
    sketch_vectors = seen.pop("first")
    apost_error(Recording(), torch.eye(n, dtype=torch.float64), "cpu", torch.float64, num_meas=5, seed=11)
    correlation = (sketch_vectors.T @ seen["first"]) / n
    assert float(correlation.abs().max()) < 0.6


def test_tutorial_certificate_on_a_composite():
    A, _ = symmetric_matrix("low_rank", n=80)
    ews, evs = seigh(A, "cpu", torch.float64, 20, seed=0)
    sA = CompositeLinOp((("Q", evs), ("Lbd", DiagonalLinOp(ews)), ("Qt", evs.T)))
    (frob_sq, f_sq, err_sq), _ = apost_error(A, sA, "cpu", torch.float64, num_meas=30, seed=1)
    assert float(err_sq / frob_sq) < 1e-24
    assert abs(float(f_sq / frob_sq) - 1) < 1e-12


def test_scree_bounds_contain_the_true_curve():
    A, _ = symmetric_matrix("slow_decay", n=80)
    ews, evs = seigh(A, "cpu", torch.float64, 30, seed=0)
    err = float(torch.linalg.matrix_norm(A - (evs * ews) @ evs.T))
    lower, upper = scree_bounds(ews, err)
    norm_sq = float(torch.linalg.matrix_norm(A) ** 2)
    for r in range(30):
        true = float(torch.linalg.matrix_norm(A - (evs[:, :r] * ews[:r]) @ evs[:, :r].T) ** 2) / norm_sq
        assert float(lower[r]) <= true <= float(upper[r])
    assert float(upper[0]) >= 1 >= float(lower[0])
    with pytest.raises(ValueError, match="non-increasing magnitude"):
        scree_bounds(ews.flip(0), err)
    assert bool(torch.isinf(scree_bounds(torch.tensor([1.0]), 2.0)[1]).all())


def test_scree_bounds_hold_for_an_approximation_that_is_no_projection():
    """A = diag(1, 0), Â = diag(1, 1): e = 1, scree(1) = 0. The ratio of tails (skerch's lower curve,
    exact for HMT's projections) would claim 1/2; the triangle-inequality bound does not."""
    lower, upper = scree_bounds(torch.tensor([1.0, 1.0], dtype=torch.float64), 1.0)
    assert float(lower[1]) <= 0.0 <= float(upper[1])
