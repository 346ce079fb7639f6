"""The benchmark problems: an MLP, a CNN and a tiny transformer, with their data, seeded.

Shared by ``products.py``, ``arithmetic_floor.py`` and ``spectral_density.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

PROBLEMS = ("mlp", "cnn", "transformer")


class SequenceClassifier(nn.Module):
    """``nn.TransformerEncoderLayer`` (default settings, dropout 0) and a linear head per position.

    Output ``[N, C, T]`` for ``CrossEntropyLoss`` with sequence targets ``[N, T]``.
    """

    def __init__(self, d_model: int = 32, num_classes: int = 10):
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(
            d_model=d_model, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)).transpose(1, 2)


def make_problem(name: str, device: torch.device, quick: bool):
    """Model, loss, params and data (list of ``(X, y)``) of a benchmark problem, seeded."""
    torch.manual_seed(0)
    shrink = 8 if quick else 1
    if name == "mlp":
        model = nn.Sequential(
            nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )
        num_batches, batch_size = 4, 128 // shrink
        inputs = [torch.randn(batch_size, 784) for _ in range(num_batches)]
        targets = [torch.randint(0, 10, (batch_size,)) for _ in range(num_batches)]
    elif name == "cnn":
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 8 * 8, 10),
        )
        num_batches, batch_size = 2, 64 // shrink
        inputs = [torch.randn(batch_size, 3, 16, 16) for _ in range(num_batches)]
        targets = [torch.randint(0, 10, (batch_size,)) for _ in range(num_batches)]
    elif name == "cnn-wide":  # larger activations per sample: where wide products run out of memory
        model = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 8 * 8, 10),
        )
        num_batches, batch_size = 1, 64 // shrink
        inputs = [torch.randn(batch_size, 3, 32, 32) for _ in range(num_batches)]
        targets = [torch.randint(0, 10, (batch_size,)) for _ in range(num_batches)]
    elif name == "transformer":
        model = SequenceClassifier()
        num_batches, batch_size, length = 4, 32 // shrink, 16
        inputs = [torch.randn(batch_size, length, 32) for _ in range(num_batches)]
        targets = [torch.randint(0, 10, (batch_size, length)) for _ in range(num_batches)]
    else:
        raise ValueError(f"unknown problem {name!r}")
    model = model.to(device)
    data = [(X.to(device), y.to(device)) for X, y in zip(inputs, targets)]
    params = [p for p in model.parameters() if p.requires_grad]
    return model, nn.CrossEntropyLoss(), params, data


PROBLEM_LABELS = {
    "mlp": "MLP 784-256-256-10, 4 batches of 128, CE",
    "cnn": "CNN conv16-conv32/s2-linear on 3x16x16, 2 batches of 64, CE",
    "cnn-wide": "CNN conv32-conv64/s2-conv64/s2-linear on 3x32x32, 1 batch of 64, CE",
    "transformer": (
        "TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, dropout=0) + linear head, "
        "4 batches of 32 sequences of length 16, sequence CE ([N, C, T] output)"
    ),
}


def gradient_function(model, loss_func, params, data) -> Callable[[], list]:
    """One gradient over all batches with plain autograd (what users compare with)."""

    def gradient():
        for param in params:
            param.grad = None
        for X, y in data:
            loss_func(model(X), y).backward()
        return [param.grad for param in params]

    return gradient
