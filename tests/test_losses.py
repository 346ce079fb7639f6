"""Closed-form output Hessians and loss scales."""

import pytest
import torch
from loss_cases import CASES, GENERATOR, OUTPUTS
from torch import nn
from torch.func import hessian

from curvkit.losses import (
    batch_loss_scale,
    hessian_sqrt_columns,
    num_loss_terms,
    output_hessian_matmat,
    output_hessian_sqrt,
    output_hessian_sqrt_columns,
)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_closed_form_output_hessian(name, reduction):
    loss_cls, kind, make_target = CASES[name]
    loss_func, output = loss_cls(reduction=reduction), OUTPUTS[kind]
    target = make_target(output)
    dense = hessian(lambda f: loss_func(f, target))(output).reshape(output.numel(), output.numel())
    tangents = torch.randn(2, *output.shape, dtype=torch.float64, generator=GENERATOR)
    expected = (dense @ tangents.reshape(2, -1).T).T.reshape(tangents.shape)
    torch.testing.assert_close(output_hessian_matmat(loss_func, output, target, tangents), expected)


ROOT_CASES = {
    **CASES,
    "ce-ignored": (
        lambda reduction: nn.CrossEntropyLoss(reduction=reduction, ignore_index=1),
        "seq",
        lambda out: torch.randint(0, 3, (4, 5), generator=GENERATOR),
    ),
    "ce-smoothed": (
        lambda reduction: nn.CrossEntropyLoss(reduction=reduction, label_smoothing=0.2),
        "flat",
        lambda out: torch.randint(0, 3, (4,), generator=GENERATOR),
    ),
    "ce-one-class": (nn.CrossEntropyLoss, "one", lambda out: torch.zeros(4, dtype=torch.long)),
}


@pytest.mark.parametrize("symmetric", [False, True], ids=["householder", "symmetric"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", sorted(ROOT_CASES))
def test_hessian_root_squares_to_the_hessian_with_c_minus_one_columns(name, reduction, symmetric):
    """``S Sᵀ = ∇²_f L_b`` per sample; cross-entropy's root has ``C − 1`` columns per position."""
    loss_cls, kind, make_target = ROOT_CASES[name]
    loss_func, output = loss_cls(reduction=reduction), OUTPUTS[kind] * 4  # confident: small p too
    target = make_target(output)
    root = output_hessian_sqrt(loss_func, output, target, symmetric=symmetric)
    classes, per_sample = output.shape[1], output[0].numel()
    fewer = isinstance(loss_func, nn.CrossEntropyLoss) and classes > 1 and not symmetric
    assert root.shape[0] == hessian_sqrt_columns(loss_func, output, symmetric)
    assert root.shape[0] == (per_sample // classes * (classes - 1) if fewer else per_sample)
    tangents = torch.randn(3, *output.shape, dtype=torch.float64, generator=GENERATOR)
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
    loss_func, output = loss_cls(reduction="mean"), OUTPUTS[kind] * 4
    target = make_target(output)
    root = output_hessian_sqrt(loss_func, output, target, symmetric=symmetric)
    columns = output_hessian_sqrt_columns(loss_func, output, target, symmetric=symmetric)
    pieces = torch.cat([columns(start, start + 2) for start in range(0, root.shape[0], 2)])
    torch.testing.assert_close(pieces, root, rtol=0, atol=0)
    assert columns(3, 3).shape == (0, *output.shape)
    torch.testing.assert_close(columns(1, 10**6), root[1:], rtol=0, atol=0)


def test_ignore_index_positions_have_no_curvature():
    loss_func = nn.CrossEntropyLoss()
    output, target = OUTPUTS["seq"], torch.randint(0, 3, (4, 5), generator=GENERATOR)
    target[0, :2] = -100
    dense = hessian(lambda f: loss_func(f, target))(output).reshape(output.numel(), -1)
    tangents = torch.randn(1, *output.shape, dtype=torch.float64, generator=GENERATOR)
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
