"""Outputs and targets of every supported loss, shared by the loss and sampling tests."""

import torch
from torch import nn

GENERATOR = torch.Generator().manual_seed(0)
OUTPUTS = {"flat": torch.randn(4, 3, dtype=torch.float64, generator=GENERATOR)}
OUTPUTS["seq"] = torch.randn(4, 3, 5, dtype=torch.float64, generator=GENERATOR)
OUTPUTS["one"] = torch.randn(4, 1, dtype=torch.float64, generator=GENERATOR)  # one class: no curvature

CASES = {
    "mse": (nn.MSELoss, "flat", lambda out: torch.randn_like(out)),
    "ce": (nn.CrossEntropyLoss, "flat", lambda out: torch.randint(0, 3, (4,), generator=GENERATOR)),
    "ce-seq": (nn.CrossEntropyLoss, "seq", lambda out: torch.randint(0, 3, (4, 5), generator=GENERATOR)),
    "ce-probabilities": (nn.CrossEntropyLoss, "flat", lambda out: torch.softmax(torch.randn_like(out), 1)),
    "bce": (nn.BCEWithLogitsLoss, "flat", lambda out: torch.rand_like(out)),
}
