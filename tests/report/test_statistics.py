"""The error bars cover what they claim to: checked by simulation over many seeds."""

from __future__ import annotations

import numpy
import pytest
import torch

from curvkit import as_linear_operator
from curvkit.report.analyses.traces import trace_with_error_bar
from curvkit.report.budget import CountedOperator, ProductMeter
from curvkit.report.statistics import mean_with_error_bar, relative_error_interval, squared_norm_interval


def test_student_t_interval_covers_95_percent_of_normal_means():
    generator = numpy.random.default_rng(0)
    trials = 4000
    hits = sum(
        abs(mean - 3.0) <= half_width
        for mean, half_width, _ in (
            mean_with_error_bar(generator.normal(3.0, 2.0, size=5)) for _ in range(trials)
        )
    )
    assert 0.935 <= hits / trials <= 0.965  # 0.95 within 3 binomial standard deviations


def test_error_bar_needs_two_estimates():
    with pytest.raises(ValueError, match="at least two estimates, got 1"):
        mean_with_error_bar([1.0])


def test_trace_error_bars_of_hutchpp_cover_the_trace():
    """The report's trace error bars on a PSD matrix with a decaying spectrum: coverage near 95 %."""
    generator = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(200, 200, dtype=torch.float64, generator=generator)).Q
    matrix = Q @ torch.diag(1.0 / torch.arange(1, 201, dtype=torch.float64) ** 0.7) @ Q.T
    exact = matrix.trace().item()
    trials = 300
    hits = 0
    for seed in range(trials):
        meter = ProductMeter(60)
        result = trace_with_error_bar(
            CountedOperator(as_linear_operator(matrix), meter), 60, seed=1000 * seed
        )
        hits += abs(result["estimate"] - exact) <= result["error_bar"]
        assert meter.used == 60 == 5 * result["products_per_run"]
    assert hits / trials >= 0.9  # nominal 0.95; 300 trials: binomial standard deviation 0.013


@pytest.mark.parametrize("num_meas", [5, 30])
@pytest.mark.parametrize("profile", ["flat", "one large", "decaying"])
def test_squared_norm_interval_misses_at_most_as_often_as_bounded(num_meas, profile):
    """‖M ω‖² is a sum of σ_j² χ²₁ variables: simulate the estimate and count each tail's misses."""
    weights = {
        "flat": numpy.ones(50),
        "one large": numpy.r_[100.0, numpy.ones(49)],
        "decaying": 0.5 ** numpy.arange(50),
    }[profile]
    exact = weights.sum()
    generator = numpy.random.default_rng(1)
    trials, failure = 20000, 0.0125
    estimates = (generator.standard_normal((trials, num_meas, weights.size)) ** 2 @ weights).mean(axis=1)
    intervals = numpy.array([squared_norm_interval(estimate, num_meas, failure) for estimate in estimates])
    slack = 3 * numpy.sqrt(failure / trials)
    assert numpy.mean(exact < intervals[:, 0]) <= failure + slack
    assert numpy.mean(exact > intervals[:, 1]) <= failure + slack
    assert numpy.all(intervals[:, 0] <= estimates) and numpy.all(estimates <= intervals[:, 1])


def test_relative_error_interval_covers_with_gaussian_test_vectors():
    generator = numpy.random.default_rng(2)
    A = generator.standard_normal((40, 40))
    A = A @ A.T
    B = A + 0.1 * generator.standard_normal((40, 40))
    exact = numpy.linalg.norm(A - B) / numpy.linalg.norm(A)
    trials, num_meas = 2000, 10
    misses = 0
    for _ in range(trials):
        omega = generator.standard_normal((40, num_meas))
        error_sq = (((A - B) @ omega) ** 2).sum(0).mean()
        norm_sq = ((A @ omega) ** 2).sum(0).mean()
        low, high = relative_error_interval(error_sq, norm_sq, num_meas)
        misses += not low <= exact <= high
    assert misses / trials <= 0.05
