"""Closed-form output Hessians, loss scales and target sampling."""

import pytest
import torch
from torch import nn
from torch.func import hessian

from curvkit.losses import (
    batch_loss_scale,
    num_loss_terms,
    output_gradients,
    output_hessian_matmat,
    sample_targets,
)

_GEN = torch.Generator().manual_seed(0)
_OUT = {"flat": torch.randn(4, 3, dtype=torch.float64, generator=_GEN)}
_OUT["seq"] = torch.randn(4, 3, 5, dtype=torch.float64, generator=_GEN)

CASES = {
    "mse": (nn.MSELoss, "flat", lambda out: torch.randn_like(out)),
    "ce": (nn.CrossEntropyLoss, "flat", lambda out: torch.randint(0, 3, (4,), generator=_GEN)),
    "ce-seq": (nn.CrossEntropyLoss, "seq", lambda out: torch.randint(0, 3, (4, 5), generator=_GEN)),
    "ce-probabilities": (nn.CrossEntropyLoss, "flat", lambda out: torch.softmax(torch.randn_like(out), 1)),
    "bce": (nn.BCEWithLogitsLoss, "flat", lambda out: torch.rand_like(out)),
}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_closed_form_output_hessian(name, reduction):
    loss_cls, kind, make_target = CASES[name]
    loss_func, output = loss_cls(reduction=reduction), _OUT[kind]
    target = make_target(output)
    dense = hessian(lambda f: loss_func(f, target))(output).reshape(output.numel(), output.numel())
    tangents = torch.randn(2, *output.shape, dtype=torch.float64, generator=_GEN)
    expected = (dense @ tangents.reshape(2, -1).T).T.reshape(tangents.shape)
    torch.testing.assert_close(output_hessian_matmat(loss_func, output, target, tangents), expected)


def test_ignore_index_positions_have_no_curvature():
    loss_func = nn.CrossEntropyLoss()
    output, target = _OUT["seq"], torch.randint(0, 3, (4, 5), generator=_GEN)
    target[0, :2] = -100
    dense = hessian(lambda f: loss_func(f, target))(output).reshape(output.numel(), -1)
    tangents = torch.randn(1, *output.shape, dtype=torch.float64, generator=_GEN)
    torch.testing.assert_close(
        output_hessian_matmat(loss_func, output, target, tangents)[0].reshape(-1),
        dense @ tangents.reshape(-1),
    )
    assert num_loss_terms(loss_func, output, target) == 18


@pytest.mark.parametrize(
    "loss_func, output, target, terms",
    [
        (nn.MSELoss(), torch.zeros(4, 3), torch.zeros(4, 3), 12),
        (nn.BCEWithLogitsLoss(), torch.zeros(4, 3), torch.zeros(4, 3), 12),
        (nn.CrossEntropyLoss(), torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), 4),
        (nn.CrossEntropyLoss(), torch.zeros(4, 3, 5), torch.zeros(4, 5, dtype=torch.long), 20),
        (lambda f, y: (f - y).abs().mean(), torch.zeros(4, 3), torch.zeros(4, 3), 4),
    ],
)
def test_number_of_averaged_terms(loss_func, output, target, terms):
    assert num_loss_terms(loss_func, output, target) == terms
    assert batch_loss_scale(loss_func, output, target) == pytest.approx(1 / terms)


@pytest.mark.parametrize("name", ["mse", "ce", "ce-seq", "bce"])
def test_sampled_gradient_outer_products_average_to_the_output_hessian(name):
    """Fisher identity per sample: E[∇ℓ ∇ℓᵀ] = ∇²ℓ, so the MC-Fisher is unbiased for the GGN."""
    loss_cls, kind, make_target = CASES[name]
    loss_func, output = loss_cls(reduction="sum"), _OUT[kind]
    samples = sample_targets(loss_func, output, 20000, torch.Generator().manual_seed(1))
    gradients = output_gradients(loss_func, output, samples)  # [M, N, ...]
    per_sample = gradients.reshape(gradients.shape[0], output.shape[0], -1)
    estimate = torch.einsum("mni,mnj->nij", per_sample, per_sample) / gradients.shape[0]
    target = make_target(output)  # the Hessian of these losses does not depend on it
    dense = hessian(lambda f: loss_func(f, target))(output)
    dense = dense.reshape(output.shape[0], per_sample.shape[-1], output.shape[0], per_sample.shape[-1])
    blocks = torch.stack([dense[n, :, n, :] for n in range(output.shape[0])])
    torch.testing.assert_close(estimate, blocks, atol=0.05 * blocks.abs().max().item(), rtol=0)


def test_sampling_is_reproducible_and_shaped():
    output = _OUT["seq"]
    first = sample_targets(nn.CrossEntropyLoss(), output, 3, torch.Generator().manual_seed(5))
    second = sample_targets(nn.CrossEntropyLoss(), output, 3, torch.Generator().manual_seed(5))
    assert first.shape == (3, 4, 5) and torch.equal(first, second)
    with pytest.raises(NotImplementedError, match="loss_func must be one of"):
        sample_targets(nn.L1Loss(), output, 1, torch.Generator())


@pytest.mark.parametrize("name", ["mse", "ce", "ce-seq", "bce"])
def test_one_draw_takes_a_plain_backward_pass_with_the_same_result(name):
    loss_cls, kind, _ = CASES[name]
    loss_func, output = loss_cls(), _OUT[kind]
    samples = sample_targets(loss_func, output, 2, torch.Generator().manual_seed(2))
    both = output_gradients(loss_func, output, samples)  # vmap over the draws
    for draw in range(2):
        one = output_gradients(loss_func, output, samples[draw : draw + 1])
        torch.testing.assert_close(one, both[draw : draw + 1], rtol=1e-6, atol=1e-7)
