"""adaptive_seigh grows its sketch until the estimated error meets the target."""

import pytest
import torch
from spectra import TorchOnly, relative_error, symmetric_matrix

from curvkit.sketch import adaptive_seigh


@pytest.mark.parametrize("target", [1e-2, 1e-4, 1e-6])
def test_stops_at_the_first_block_meeting_the_target(target):
    A, _ = symmetric_matrix("indefinite", n=150)
    foreign = TorchOnly(A)
    result = adaptive_seigh(
        foreign, "cpu", torch.float64, target, max_dims=100, block_dims=5, num_test=20, seed=0
    )
    ews, evs = result
    true = relative_error(ews, evs, A)
    assert result.rel_err <= target
    assert 0.3 * true <= result.rel_err <= 3 * true  # 20 Gaussian test vectors
    assert result.outer_dims % 5 == 0 and evs.shape == (150, result.outer_dims)
    assert result.num_products == foreign.num_columns == 20 + 2 * result.outer_dims
    smaller = adaptive_seigh(
        A, "cpu", torch.float64, target, max_dims=result.outer_dims - 5, block_dims=5, num_test=20, seed=0
    )
    assert smaller.rel_err > target  # one block fewer would not have met it
    torch.testing.assert_close(
        evs.T @ evs, torch.eye(result.outer_dims, dtype=torch.float64), atol=1e-12, rtol=0
    )


def test_stops_at_max_dims_and_is_exact_on_low_rank():
    A, _ = symmetric_matrix("low_rank", n=100)
    result = adaptive_seigh(A, "cpu", torch.float64, 1e-9, max_dims=30, block_dims=8, seed=1)
    assert result.outer_dims == 16 and result.rel_err < 1e-12
    unreachable = adaptive_seigh(
        symmetric_matrix("slow_decay", n=100)[0], "cpu", torch.float64, 1e-9, max_dims=30, block_dims=8
    )
    assert unreachable.outer_dims == 30 and unreachable.rel_err > 1e-9
