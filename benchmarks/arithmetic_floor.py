"""Multiply-adds of one product column as a multiple of one gradient: the floor of the ratios.

``benchmarks/products.py`` reports each product's time over one gradient's. When both run at the
same rate of multiply-adds, that ratio cannot drop below the ratio of their multiply-adds. This
script counts them for the dense and convolution layers of the MLP and CNN problems (the
transformer's attention products carry no parameters and are left out) by recording each layer's
multiply-adds per sample ``m_l`` with forward hooks:

- gradient: forward ``Σ m_l``, weight gradients ``Σ m_l``, input gradients ``Σ m_l`` over all
  layers but the first (the data need no gradient);
- GGN column (``J v`` by tangent propagation, then ``Jᵀ w`` by one backward pass): the tangent
  of each layer output ``W a`` is ``W_v a + W a_v`` (``a_v = 0`` for the first layer), the
  backward pass as for the gradient, so ``2 Σ m_l + 2 Σ_{l>1} m_l``;
- Hessian column by Pearlmutter's R-operator (tangent propagation through the forward and the
  backward pass): every bilinear product of the gradient computation gets two tangent products,
  except the two whose tangent factor is the data's (the first layer's output and its weight
  gradient), so ``2 · gradient − 2 m_1``.

A k-column product also needs the forward pass once (GGN) or the gradient once (Hessian):
``floor(k) = shared + k · column``. Element-wise operations, the loss and the bookkeeping are not
counted, so measured ratios sit above the floor unless the batched kernels of a k-column product
run at a higher rate than the gradient's smaller ones (they do for small convolutions).

KFAC's factor pass (``benchmarks/kfac.py``), per ``fisher_type``, with ``c`` columns pulled back
from the loss (``'mc'`` with one sample and ``'empirical'``: 1; ``'type-2'``: ``C − 1``, the rank
of the cross-entropy's Hessian over ``C`` classes; ``'forward-only'``: 0) and a layer of ``P``
output positions per sample, ``d_in`` inputs per position (the weight's; the bias is a block of
its own, sharing the output factor: curvkit's and curvlinops' default) and ``d_out`` outputs:

- the forward pass ``Σ m_l``, and the ``c`` columns' backward pass to the layer outputs
  ``c Σ_{l>1} m_l`` (no weight gradients);
- the factors' Gram products, counted as symmetric rank updates (one triangle,
  ``t(d) = d (d + 1) / 2`` per row: no library does fewer): ``P t(d_in) + c P t(d_out)`` for
  ``'expand'``, ``t(d_in) + c t(d_out)`` for ``'reduce'`` (positions summed first, no products).

Usage::

    python benchmarks/arithmetic_floor.py
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from problems import make_problem
from products import MATMAT_TARGETS, NUM_COLUMNS

FACTOR_TARGET = {"mlp": 2.0, "cnn": 3.0}  # benchmarks/kfac.py's, × one gradient
KFAC_ROWS = ("'mc'", "'type-2'", "'empirical'", "'forward-only'", "'type-2', reduce")


@dataclass(frozen=True)
class LayerShape:
    """A layer's products per sample: ``positions`` dot products of ``fan_in`` for each of ``fan_out``."""

    positions: int
    fan_in: int
    fan_out: int

    @property
    def multiply_adds(self) -> int:
        return self.positions * self.fan_in * self.fan_out


def layer_shapes(model: nn.Module, X: torch.Tensor) -> list[LayerShape]:
    """Each ``Linear`` / ``Conv2d`` of ``model`` on one sample of ``X``, in the order they run."""
    shapes = []

    def record(module, inputs, output):
        # each output element is a dot product over the weight's row: (input channels / groups)
        # × kernel for a convolution; a linear layer's leading axes are its positions
        fan_out = module.weight.shape[0]
        positions = output[0].numel() // fan_out
        shapes.append(LayerShape(positions, module.weight[0].numel(), fan_out))

    handles = [
        module.register_forward_hook(record)
        for module in model.modules()
        if isinstance(module, (nn.Linear, nn.Conv2d))
    ]
    with torch.no_grad():
        model(X[:1])
    for handle in handles:
        handle.remove()
    return shapes


def multiply_adds_per_layer(model: nn.Module, X: torch.Tensor) -> list[int]:
    """Multiply-adds per sample of each ``Linear`` / ``Conv2d`` in the order they run."""
    return [shape.multiply_adds for shape in layer_shapes(model, X)]


def floors(counts: list[int]) -> dict[str, float]:
    total, later = sum(counts), sum(counts[1:])
    gradient = 2 * total + later
    ggn_column = 2 * total + 2 * later
    hessian_column = 2 * gradient - 2 * counts[0]
    return {
        "gradient": gradient,
        "forward / gradient": total / gradient,
        "GGN column / gradient": ggn_column / gradient,
        "Hessian column / gradient": hessian_column / gradient,
        f"GGN k={NUM_COLUMNS} floor": (total + NUM_COLUMNS * ggn_column) / gradient,
        f"Hessian k={NUM_COLUMNS} floor": (gradient + NUM_COLUMNS * hessian_column) / gradient,
    }


def triangle(dim: int) -> int:
    """Multiply-adds per row of a symmetric rank update of a ``dim × dim`` matrix."""
    return dim * (dim + 1) // 2


def kfac_floor(shapes: list[LayerShape], columns: int, kfac_approx: str = "expand") -> int:
    """Multiply-adds per sample of a KFAC factor pass with ``columns`` pulled back (module docstring)."""
    forward = sum(shape.multiply_adds for shape in shapes)
    backward = columns * sum(shape.multiply_adds for shape in shapes[1:])
    grams = sum(
        (1 if kfac_approx == "reduce" else shape.positions)
        * (triangle(shape.fan_in) + columns * triangle(shape.fan_out))
        for shape in shapes
    )
    return forward + backward + grams


def kfac_floors(shapes: list[LayerShape], num_classes: int, convolutions: bool) -> dict[str, float]:
    """Each factor row of ``benchmarks/kfac.py``: its multiply-adds over one gradient's."""
    gradient = floors([shape.multiply_adds for shape in shapes])["gradient"]
    columns = {"mc": 1, "type-2": num_classes - 1, "empirical": 1, "forward-only": 0}
    result = {f"'{kind}'": kfac_floor(shapes, count) / gradient for kind, count in columns.items()}
    if convolutions:
        result["'type-2', reduce"] = kfac_floor(shapes, columns["type-2"], "reduce") / gradient
    return result


def problem_kfac_floors(problem: str) -> dict[str, float]:
    """:func:`kfac_floors` of a benchmark problem (its model on one sample of its data)."""
    model, _, _, data = make_problem(problem, torch.device("cpu"), quick=False)
    with torch.no_grad():
        num_classes = model(data[0][0][:1]).shape[1]
    convolutions = any(isinstance(module, nn.Conv2d) for module in model.modules())
    return kfac_floors(layer_shapes(model, data[0][0]), num_classes, convolutions)


def kfac_table() -> list[str]:
    lines = [
        "| problem | " + " | ".join(f"factors {row}" for row in KFAC_ROWS) + " | target (every type) |",
        "|---|" + "---:|" * (len(KFAC_ROWS) + 1),
    ]
    for problem in ("mlp", "cnn"):
        result = problem_kfac_floors(problem)
        cells = [f"{result[row]:.2f}" if row in result else "–" for row in KFAC_ROWS]
        lines.append(f"| {problem} | " + " | ".join(cells) + f" | ≤ {FACTOR_TARGET[problem]:.0f} |")
    return lines


def main() -> None:
    lines = [
        f"| problem | multiply-adds per sample: gradient | forward | GGN column | Hessian column "
        f"| GGN k={NUM_COLUMNS}: floor (target) | Hessian k={NUM_COLUMNS}: floor (target) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for problem in ("mlp", "cnn"):
        model, _, _, data = make_problem(problem, torch.device("cpu"), quick=False)
        result = floors(multiply_adds_per_layer(model, data[0][0]))
        lines.append(
            f"| {problem} | {result['gradient']:,} | {result['forward / gradient']:.2f} "
            f"| {result['GGN column / gradient']:.2f} | {result['Hessian column / gradient']:.2f} "
            f"| {result[f'GGN k={NUM_COLUMNS} floor']:.1f} (≤ {MATMAT_TARGETS['GGN']:.0f}) "
            f"| {result[f'Hessian k={NUM_COLUMNS} floor']:.1f} (≤ {MATMAT_TARGETS['Hessian']:.0f}) |"
        )
    print("Multiply-adds as multiples of one gradient's (columns 3-5) and the resulting floors.\n")
    print("\n".join(lines))
    print(
        "\nKFAC's factor passes (benchmarks/kfac.py): multiply-adds over one gradient's, the Gram "
        "products counted as symmetric rank updates (one triangle).\n"
    )
    print("\n".join(kfac_table()))


if __name__ == "__main__":
    main()
