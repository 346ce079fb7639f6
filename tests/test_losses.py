"""Closed-form output Hessians, loss scales and target sampling."""

import pytest
import torch
from torch import nn
from torch.func import hessian

from curvkit.losses import (
    batch_loss_scale,
    hessian_sqrt_columns,
    num_loss_terms,
    output_gradients,
    output_hessian_matmat,
    output_hessian_sqrt,
    output_hessian_sqrt_columns,
    sample_targets,
    sampled_output_gradients,
)

_GEN = torch.Generator().manual_seed(0)
_OUT = {"flat": torch.randn(4, 3, dtype=torch.float64, generator=_GEN)}
_OUT["seq"] = torch.randn(4, 3, 5, dtype=torch.float64, generator=_GEN)
_OUT["one"] = torch.randn(4, 1, dtype=torch.float64, generator=_GEN)  # one class: no curvature

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


ROOT_CASES = {
    **CASES,
    "ce-ignored": (
        lambda reduction: nn.CrossEntropyLoss(reduction=reduction, ignore_index=1),
        "seq",
        lambda out: torch.randint(0, 3, (4, 5), generator=_GEN),
    ),
    "ce-smoothed": (
        lambda reduction: nn.CrossEntropyLoss(reduction=reduction, label_smoothing=0.2),
        "flat",
        lambda out: torch.randint(0, 3, (4,), generator=_GEN),
    ),
    "ce-one-class": (nn.CrossEntropyLoss, "one", lambda out: torch.zeros(4, dtype=torch.long)),
}


@pytest.mark.parametrize("symmetric", [False, True], ids=["householder", "symmetric"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", sorted(ROOT_CASES))
def test_hessian_root_squares_to_the_hessian_with_c_minus_one_columns(name, reduction, symmetric):
    """``S Sᵀ = ∇²_f L_b`` per sample; cross-entropy's root has ``C − 1`` columns per position."""
    loss_cls, kind, make_target = ROOT_CASES[name]
    loss_func, output = loss_cls(reduction=reduction), _OUT[kind] * 4  # confident: small p too
    target = make_target(output)
    root = output_hessian_sqrt(loss_func, output, target, symmetric=symmetric)
    classes, per_sample = output.shape[1], output[0].numel()
    fewer = isinstance(loss_func, nn.CrossEntropyLoss) and classes > 1 and not symmetric
    assert root.shape[0] == hessian_sqrt_columns(loss_func, output, symmetric)
    assert root.shape[0] == (per_sample // classes * (classes - 1) if fewer else per_sample)
    tangents = torch.randn(3, *output.shape, dtype=torch.float64, generator=_GEN)
    projections = torch.einsum("kn...,jn...->kjn", root, tangents)
    torch.testing.assert_close(
        torch.einsum("kjn,kn...->jn...", projections, root),
        output_hessian_matmat(loss_func, output, target, tangents),
        rtol=1e-12,
        atol=1e-14,
    )


@pytest.mark.parametrize("symmetric", [False, True], ids=["householder", "symmetric"])
@pytest.mark.parametrize("name", sorted(ROOT_CASES))
def test_hessian_root_columns_by_ranges_are_the_roots_columns(name, symmetric):
    """Ranges of two columns (and empty or clipped ones) give the root's columns, in order."""
    loss_cls, kind, make_target = ROOT_CASES[name]
    loss_func, output = loss_cls(reduction="mean"), _OUT[kind] * 4
    target = make_target(output)
    root = output_hessian_sqrt(loss_func, output, target, symmetric=symmetric)
    columns = output_hessian_sqrt_columns(loss_func, output, target, symmetric=symmetric)
    pieces = torch.cat([columns(start, start + 2) for start in range(0, root.shape[0], 2)])
    torch.testing.assert_close(pieces, root, rtol=0, atol=0)
    assert columns(3, 3).shape == (0, *output.shape)
    torch.testing.assert_close(columns(1, 10**6), root[1:], rtol=0, atol=0)


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
    assert num_loss_terms(loss_func, target, output.shape[0]) == 18


@pytest.mark.parametrize(
    "loss_func, output, target, terms",
    [
        (nn.MSELoss(), torch.zeros(4, 3), torch.zeros(4, 3), 12),
        (nn.BCEWithLogitsLoss(), torch.zeros(4, 3), torch.zeros(4, 3), 12),
        (nn.CrossEntropyLoss(), torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), 4),
        (nn.CrossEntropyLoss(), torch.zeros(4, 3, 5), torch.zeros(4, 5, dtype=torch.long), 20),
        (lambda f, y: (f - y).abs().mean(), torch.zeros(4, 3), torch.zeros(4, 3), 4),
        (
            nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.0])),
            torch.zeros(4, 3),
            torch.tensor([0, 1, 1, 2]),
            5.5,
        ),
        (nn.CrossEntropyLoss(), torch.zeros(4, 3), torch.tensor([0, -100, 1, -100]), 2),
    ],
)
def test_number_of_averaged_terms(loss_func, output, target, terms):
    assert num_loss_terms(loss_func, target, output.shape[0]) == terms
    assert batch_loss_scale(loss_func, output, target) == pytest.approx(1 / terms)


@pytest.mark.parametrize("name", ["mse", "ce", "ce-seq", "bce"])
def test_sampled_gradient_outer_products_average_to_the_output_hessian(name):
    """Fisher identity per sample: E[∇ℓ ∇ℓᵀ] = ∇²ℓ, so the MC-Fisher is unbiased for the GGN."""
    loss_cls, kind, make_target = CASES[name]
    loss_func, output = loss_cls(reduction="sum"), _OUT[kind]
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
    output, observed = _OUT["seq"], torch.zeros(4, 5, dtype=torch.long)
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
    loss_func, output = loss_cls(reduction=reduction), _OUT[kind]
    observed = make_target(output)
    if name.startswith("ce"):
        observed[0] = -100  # an ignored position (or sequence)
    samples = sample_targets(loss_func, output, observed, 2, torch.Generator().manual_seed(2))
    closed_form = sampled_output_gradients(loss_func, output, samples, observed)
    for draw in range(2):
        torch.testing.assert_close(closed_form[draw], output_gradients(loss_func, output, samples[draw]))


def test_sampled_gradients_leave_label_smoothing_out():
    """Smoothed gradients have mean ε (p − 1/C) ≠ 0 under the model's distribution; the NLL's do not."""
    output = _OUT["flat"]
    observed = torch.randint(0, 3, (4,), generator=_GEN)
    smoothed, plain = nn.CrossEntropyLoss(label_smoothing=0.3), nn.CrossEntropyLoss()
    samples = sample_targets(smoothed, output, observed, 1, torch.Generator().manual_seed(4))
    torch.testing.assert_close(
        sampled_output_gradients(smoothed, output, samples, observed)[0],
        output_gradients(plain, output, samples[0]),
    )
