"""Targets are checked against the loss up front, with torch's rules and a message that says them."""

import pytest
import torch
from torch import nn

from curvkit._targets import check_target, target_problem

OUTPUT, SEQUENCE = (4, 3), (4, 3, 5)
PROBABILITIES = torch.softmax(torch.randn(4, 3), dim=1)

ACCEPTED = {
    "ce class indices": (nn.CrossEntropyLoss(), torch.tensor([0, 1, 2, 1]), OUTPUT),
    "ce uint8 class indices": (nn.CrossEntropyLoss(), torch.tensor([0, 1, 2, 1], dtype=torch.uint8), OUTPUT),
    "ce sequence class indices": (nn.CrossEntropyLoss(), torch.zeros(4, 5, dtype=torch.long), SEQUENCE),
    "ce probabilities": (nn.CrossEntropyLoss(), PROBABILITIES, OUTPUT),
    "ce sequence probabilities": (nn.CrossEntropyLoss(), torch.full(SEQUENCE, 1 / 3), SEQUENCE),
    "ce probabilities, output unknown": (nn.CrossEntropyLoss(), PROBABILITIES, None),
    "nll class indices": (nn.NLLLoss(), torch.tensor([0, 1, 2, 1]), OUTPUT),
    "mse": (nn.MSELoss(), torch.randn(OUTPUT), OUTPUT),
    "mse broadcasting (torch warns)": (nn.MSELoss(), torch.randn(4, 1), OUTPUT),
    "bce": (nn.BCEWithLogitsLoss(), torch.rand(OUTPUT), OUTPUT),
    "other torch loss": (nn.L1Loss(), torch.tensor([1, 2]), OUTPUT),
    "callable": (lambda f, y: (f - y).square().sum(), "anything", OUTPUT),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_targets_torch_accepts_are_accepted(case):
    loss_func, target, output_shape = ACCEPTED[case]
    assert target_problem(loss_func, target, output_shape) is None


# loss, target, output shape (None: not known yet), the message
REFUSED = {
    "ce float class indices": (
        nn.CrossEntropyLoss(),
        torch.tensor([0.0, 1.0, 2.0, 1.0]),
        OUTPUT,
        r"y must hold class indices \(torch.int64 or torch.uint8\) of shape \[4\], or class probabilities "
        r"\(floating point\) of the output's shape \[4, 3\], for CrossEntropyLoss; got torch.float32 of "
        r"shape \[4\]\. Class indices stored as floats: pass y.long\(\)\.",
    ),
    "ce float class indices, output unknown": (
        nn.CrossEntropyLoss(),
        torch.tensor([0.0, 1.0, 2.0, 1.0]),
        None,
        r"of shape \[N\] \(outputs \[N, C\]\) or \[N, T\] \(outputs \[N, C, T\]\), or class probabilities",
    ),
    "ce int32 class indices": (
        nn.CrossEntropyLoss(),
        torch.tensor([0, 1, 2, 1], dtype=torch.int32),
        None,
        r"y must hold class indices \(torch.int64 or torch.uint8\) for CrossEntropyLoss, got torch.int32 "
        r"of shape \[4\]: pass y.long\(\)\.",
    ),
    "ce bool class indices": (
        nn.CrossEntropyLoss(),
        torch.ones(4, dtype=torch.bool),
        OUTPUT,
        "got torch.bool",
    ),
    "ce class indices with a class axis": (
        nn.CrossEntropyLoss(),
        torch.zeros(4, 1, dtype=torch.long),
        OUTPUT,
        r"y must hold class indices of shape \[4\] \(the output's shape \[4, 3\] without its class axis, "
        r"dim 1\) for CrossEntropyLoss, got torch.int64 of shape \[4, 1\]\.",
    ),
    "ce sequence of the wrong length": (
        nn.CrossEntropyLoss(),
        torch.zeros(4, 6, dtype=torch.long),
        SEQUENCE,
        r"of shape \[4, 5\] \(the output's shape \[4, 3, 5\] without",
    ),
    "ce probabilities of the wrong shape": (
        nn.CrossEntropyLoss(),
        torch.full((4, 3, 6), 1 / 3),
        SEQUENCE,
        r"or class probabilities \(floating point\) of the output's shape \[4, 3, 5\], for CrossEntropyLoss",
    ),
    "nll probabilities": (
        nn.NLLLoss(),
        PROBABILITIES,
        OUTPUT,
        r"y must hold class indices \(torch.int64 or torch.uint8\) of shape \[4\] for NLLLoss; got",
    ),
    "bce integer labels": (
        nn.BCEWithLogitsLoss(),
        torch.ones(OUTPUT, dtype=torch.long),
        None,
        r"y must be floating point \(0/1 labels, probabilities\) for BCEWithLogitsLoss, got torch.int64 "
        r"of shape \[4, 3\]: pass y.float\(\)\.",
    ),
    "bce broadcasting": (
        nn.BCEWithLogitsLoss(),
        torch.rand(4, 1),
        OUTPUT,
        r"y must have the output's shape \[4, 3\] for BCEWithLogitsLoss, got torch.float32 of shape \[4, 1\]",
    ),
    "mse not broadcasting": (
        nn.MSELoss(),
        torch.randn(4, 2),
        OUTPUT,
        r"y must have the output's shape \[4, 3\] for MSELoss, got torch.float32 of shape \[4, 2\]\.",
    ),
    "not a tensor": (
        nn.CrossEntropyLoss(),
        [0, 1, 2, 1],
        OUTPUT,
        "y must be a tensor for CrossEntropyLoss, got list",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_targets_torch_refuses_are_refused_with_what_was_expected(case):
    loss_func, target, output_shape, match = REFUSED[case]
    with pytest.raises(ValueError, match=r"^batch 3: y must.*" + match.removeprefix("y must")):
        check_target(loss_func, target, 3, output_shape)
