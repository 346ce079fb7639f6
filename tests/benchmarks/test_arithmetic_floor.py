"""The multiply-add counts behind the floors in benchmarks/README.md."""

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from arithmetic_floor import floors, multiply_adds_per_layer


def test_counts_dense_and_convolution_layers_in_order():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))
    # convolution: 2 × 2 × 2 outputs, each a dot product of 1 × 3 × 3; then 8 × 3
    assert multiply_adds_per_layer(model, torch.zeros(5, 1, 4, 4)) == [72, 24]


def test_floors_of_a_two_layer_network():
    result = floors([12, 8])
    # gradient: forward 20, weight gradients 20, input gradient of the second layer 8
    assert result["gradient"] == 48
    assert result["GGN column / gradient"] == (40 + 16) / 48
    assert result["Hessian column / gradient"] == (2 * 48 - 2 * 12) / 48
    assert result["GGN k=16 floor"] == (20 + 16 * 56) / 48
