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


def _cnn(widths: tuple[int, ...], strides: tuple[int, ...], flat_features: int) -> nn.Sequential:
    """3×3 convolutions (padding 1) with ReLUs, then a linear layer to 10 classes."""
    layers, channels = [], 3
    for width, stride in zip(widths, strides):
        layers += [nn.Conv2d(channels, width, 3, stride=stride, padding=1), nn.ReLU()]
        channels = width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat_features, 10))


def make_problem(name: str, device: torch.device, quick: bool):
    """Model, loss, params and data (list of ``(X, y)``) of a benchmark problem, seeded."""
    torch.manual_seed(0)
    target_shape = ()
    if name == "mlp":
        model = nn.Sequential(
            nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )
        num_batches, batch_size, input_shape = 4, 128, (784,)
    elif name == "cnn":
        model = _cnn((16, 32), (1, 2), 32 * 8 * 8)
        num_batches, batch_size, input_shape = 2, 64, (3, 16, 16)
    elif name == "cnn-wide":  # larger activations per sample: where wide products run out of memory
        model = _cnn((32, 64, 64), (1, 2, 2), 64 * 8 * 8)
        num_batches, batch_size, input_shape = 1, 64, (3, 32, 32)
    elif name == "transformer":
        model = SequenceClassifier()
        num_batches, batch_size, input_shape, target_shape = 4, 32, (16, 32), (16,)
    else:
        raise ValueError(f"unknown problem {name!r}")
    batch_size //= 8 if quick else 1
    inputs = [torch.randn(batch_size, *input_shape) for _ in range(num_batches)]
    targets = [torch.randint(0, 10, (batch_size, *target_shape)) for _ in range(num_batches)]
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
