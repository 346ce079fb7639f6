"""Sampling from a loss's predictive distribution: MC-Fisher targets and their gradients."""

import pytest
import torch
from loss_cases import CASES, GENERATOR, OUTPUTS
from torch import nn
from torch.func import hessian

from curvkit._predictive import sample_targets, sampled_output_gradients
from curvkit.losses import output_gradients


@pytest.mark.parametrize("name", ["mse", "ce", "ce-seq", "bce"])
def test_sampled_gradient_outer_products_average_to_the_output_hessian(name):
    """Fisher identity per sample: E[∇ℓ ∇ℓᵀ] = ∇²ℓ, so the MC-Fisher is unbiased for the GGN."""
    loss_cls, kind, make_target = CASES[name]
    loss_func, output = loss_cls(reduction="sum"), OUTPUTS[kind]
    target = make_target(output)  # the Hessian of these losses does not depend on it
    samples = sample_targets(loss_func, output, target, 20000, torch.Generator().manual_seed(1))
    gradients = sampled_output_gradients(loss_func, output, samples, target)  # [M, N, ...]
    per_sample = gradients.reshape(gradients.shape[0], output.shape[0], -1)
    estimate = torch.einsum("mni,mnj->nij", per_sample, per_sample) / gradients.shape[0]
    dense = hessian(lambda f: loss_func(f, target))(output)
    dense = dense.reshape(output.shape[0], per_sample.shape[-1], output.shape[0], per_sample.shape[-1])
    blocks = torch.stack([dense[n, :, n, :] for n in range(output.shape[0])])
    torch.testing.assert_close(estimate, blocks, atol=0.05 * blocks.abs().max().item(), rtol=0)


def test_sampling_is_reproducible_shaped_and_keeps_ignored_positions():
    output, observed = OUTPUTS["seq"], torch.zeros(4, 5, dtype=torch.long)
    observed[1, 2:] = -100
    first = sample_targets(nn.CrossEntropyLoss(), output, observed, 3, torch.Generator().manual_seed(5))
    second = sample_targets(nn.CrossEntropyLoss(), output, observed, 3, torch.Generator().manual_seed(5))
    assert first.shape == (3, 4, 5) and torch.equal(first, second)
    assert (first[:, 1, 2:] == -100).all() and (first[:, observed != -100] >= 0).all()
    with pytest.raises(NotImplementedError, match="loss_func must be one of"):
        sample_targets(nn.L1Loss(), output, observed, 1, torch.Generator())


@pytest.mark.parametrize("name", ["mse", "ce", "ce-seq", "bce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_sampled_gradients_are_those_of_the_negative_log_likelihood(name, reduction):
    """The closed forms equal autograd's gradient of the loss (without smoothing) at each draw."""
    loss_cls, kind, make_target = CASES[name]
    loss_func, output = loss_cls(reduction=reduction), OUTPUTS[kind]
    observed = make_target(output)
    if name.startswith("ce"):
        observed[0] = -100  # an ignored position (or sequence)
    samples = sample_targets(loss_func, output, observed, 2, torch.Generator().manual_seed(2))
    closed_form = sampled_output_gradients(loss_func, output, samples, observed)
    for draw in range(2):
        torch.testing.assert_close(closed_form[draw], output_gradients(loss_func, output, samples[draw]))


def test_sampled_gradients_leave_label_smoothing_out():
    """Smoothed gradients have mean ε (p − 1/C) ≠ 0 under the model's distribution; the NLL's do not."""
    output = OUTPUTS["flat"]
    observed = torch.randint(0, 3, (4,), generator=GENERATOR)
    smoothed, plain = nn.CrossEntropyLoss(label_smoothing=0.3), nn.CrossEntropyLoss()
    samples = sample_targets(smoothed, output, observed, 1, torch.Generator().manual_seed(4))
    torch.testing.assert_close(
        sampled_output_gradients(smoothed, output, samples, observed)[0],
        output_gradients(plain, output, samples[0]),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_entropy_draws_follow_the_softmax(dtype):
    """Each class is drawn with its probability softmax(f)_c, per position, also for a logit of −∞."""
    logits = torch.tensor([[2.0, 0.0, -1.0, -float("inf")], [0.5, 0.5, 3.0, -4.0]], dtype=dtype)
    sequence = torch.stack([logits, logits.flip(1)], dim=-1)  # [N, C, T]: classes along dim 1
    observed = torch.zeros(2, 2, dtype=torch.long)
    draws = sample_targets(
        nn.CrossEntropyLoss(), sequence, observed, 100_000, torch.Generator().manual_seed(3)
    )
    frequencies = torch.nn.functional.one_hot(draws, 4).to(torch.float64).mean(0)  # [N, T, C]
    expected = sequence.movedim(1, -1).to(torch.float64).softmax(-1)
    # a frequency of 10⁵ draws scatters by at most √(p(1−p)/10⁵) ≤ 0.0016; six of them is 0.01
    torch.testing.assert_close(frequencies, expected, atol=0.01, rtol=0)
    assert (draws[:, 0, 0] != 3).all() and (draws[:, 0, 1] != 0).all()  # probability 0: never drawn
