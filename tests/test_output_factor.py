"""The output-space matrix Λ and its factor S, chosen by fisher_type in one place."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvkit._engine import Batch
from curvkit._output_factor import (
    FISHER_TYPES,
    check_fisher_type,
    factor_rank,
    output_curvature,
    output_factor,
)
from curvkit._predictive import batch_generator
from curvkit.losses import num_loss_terms

LOSSES = {
    "mse": (nn.MSELoss(), lambda n: torch.randn(n, 3, dtype=torch.float64)),
    "ce": (nn.CrossEntropyLoss(), lambda n: torch.randint(0, 3, (n,))),
    "ce-sum": (nn.CrossEntropyLoss(reduction="sum"), lambda n: torch.randint(0, 3, (n,))),
    "bce": (nn.BCEWithLogitsLoss(), lambda n: torch.rand(n, 3, dtype=torch.float64).round()),
}


def _batch(loss_name: str):
    torch.manual_seed(0)
    loss_func, targets = LOSSES[loss_name]
    output = torch.randn(4, 3, dtype=torch.float64)
    y = targets(4)
    return loss_func, output, Batch(0, output, y, 4, num_loss_terms(loss_func, y, 4))


@pytest.mark.parametrize("fisher_type", ["type-2", "mc", "empirical"])
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_the_factor_squares_to_the_matrix(fisher_type, loss_name):
    """``Λ V = S (Sᵀ V)`` sample by sample, with ``K`` = :func:`factor_rank` columns."""
    loss_func, output, batch = _batch(loss_name)
    curvature = output_curvature(
        fisher_type, loss_func, output, batch, batch_generator(1, 0, output.device), mc_samples=2
    )
    factor = curvature.factor()
    assert factor.shape == (factor_rank(fisher_type, loss_func, output, 2), *output.shape)
    tangents = torch.randn(5, *output.shape, dtype=torch.float64)
    projections = torch.einsum("knc,jnc->kjn", factor, tangents)
    torch.testing.assert_close(curvature.matmat(tangents), torch.einsum("kjn,knc->jnc", projections, factor))


def test_mc_draws_follow_the_seed_and_forward_only_has_no_factor():
    loss_func, output, batch = _batch("ce")
    first = output_factor("mc", loss_func, output, batch, batch_generator(5, 0, output.device), 3)
    again = output_factor("mc", loss_func, output, batch, batch_generator(5, 0, output.device), 3)
    other = output_factor("mc", loss_func, output, batch, batch_generator(6, 0, output.device), 3)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert output_factor("forward-only", loss_func, output, batch) is None
    assert factor_rank("forward-only", loss_func, output) is None


def test_unknown_fisher_types_are_named():
    for fisher_type in FISHER_TYPES:
        check_fisher_type(fisher_type)
    with pytest.raises(
        ValueError, match=r"fisher_type must be one of 'type-2', 'mc', 'empirical', 'forward-only'"
    ):
        check_fisher_type("type-1")


def test_type_2_without_a_closed_form_has_a_matrix_but_no_factor():
    loss_func = nn.L1Loss()
    output = torch.randn(4, 3, dtype=torch.float64)
    batch = Batch(0, output, torch.randn(4, 3, dtype=torch.float64), 4, 12.0)
    assert output_curvature("type-2", loss_func, output, batch).factor is None
    with pytest.raises(NotImplementedError, match="No closed-form Hessian square root for L1Loss"):
        output_factor("type-2", loss_func, output, batch)


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_mc_is_the_mean_of_the_sampled_gradients_outer_products(loss_name):
    """``Λ = (1 / (c M)) Σ_m g̃_m g̃_mᵀ`` per sample, with ``g̃_m = c ∇(−log q(ỹ_m | f))``."""
    from curvkit._predictive import sample_targets, sampled_output_gradients
    from curvkit.losses import batch_loss_scale

    loss_func, output, batch = _batch(loss_name)
    mc_samples = 3
    curvature = output_curvature(
        "mc", loss_func, output, batch, batch_generator(2, 0, output.device), mc_samples
    )
    targets = sample_targets(loss_func, output, batch.y, mc_samples, batch_generator(2, 0, output.device))
    gradients = sampled_output_gradients(loss_func, output, targets, batch.y, batch.loss_terms)
    scale = batch_loss_scale(loss_func, output, batch.y, batch.loss_terms)
    dense = torch.einsum("mnc,mnd->ncd", gradients, gradients) / (scale * mc_samples)
    tangents = torch.randn(2, *output.shape, dtype=torch.float64)
    torch.testing.assert_close(curvature.matmat(tangents), torch.einsum("ncd,knd->knc", dense, tangents))
