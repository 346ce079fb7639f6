"""The multiply-add counts behind the floors in benchmarks/README.md."""

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from arithmetic_floor import (
    LayerShape,
    floors,
    kfac_floor,
    kfac_floors,
    layer_shapes,
    multiply_adds_per_layer,
)


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


def test_layer_shapes_count_positions_and_a_convolutions_patch():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.Flatten(), nn.Linear(2, 3))
    shapes = layer_shapes(model, torch.zeros(5, 1, 3, 3))
    assert shapes == [LayerShape(1, 9, 2), LayerShape(1, 2, 3)]


def test_kfac_floor_counts_forward_backward_and_triangles():
    shapes = [LayerShape(positions=4, fan_in=3, fan_out=2), LayerShape(positions=1, fan_in=8, fan_out=5)]
    forward, later = 4 * 3 * 2 + 8 * 5, 8 * 5
    # one triangle per row: t(3) = 6 and t(2) = 3 at 4 positions, t(8) = 36 and t(5) = 15 once
    expand = {
        columns: forward + columns * later + 4 * (6 + columns * 3) + 36 + columns * 15
        for columns in (0, 1, 4)
    }
    for columns, expected in expand.items():
        assert kfac_floor(shapes, columns) == expected
    assert kfac_floor(shapes, 4, "reduce") == forward + 4 * later + (6 + 4 * 3) + 36 + 4 * 15
    gradient = floors([24, 40])["gradient"]
    result = kfac_floors(shapes, num_classes=5, convolutions=True)
    assert result["'type-2'"] == expand[4] / gradient  # C − 1 columns
    assert result["'mc'"] == result["'empirical'"] == expand[1] / gradient
    assert result["'forward-only'"] == expand[0] / gradient
    assert "'type-2', reduce" in result and "'type-2', reduce" not in kfac_floors(shapes, 5, False)
