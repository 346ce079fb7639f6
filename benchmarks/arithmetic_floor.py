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

Usage::

    python benchmarks/arithmetic_floor.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from problems import make_problem
from products import MATMAT_TARGETS, NUM_COLUMNS


def multiply_adds_per_layer(model: nn.Module, X: torch.Tensor) -> list[int]:
    """Multiply-adds per sample of each ``Linear`` / ``Conv2d`` in the order they run."""
    counts = []

    def record(module, inputs, output):
        if isinstance(module, nn.Linear):
            counts.append(module.in_features * module.out_features)
        else:  # each output element is a dot product over (input channels / groups) × kernel
            kernel = module.weight[0].numel()
            counts.append(output[0].numel() * kernel)

    handles = [
        module.register_forward_hook(record)
        for module in model.modules()
        if isinstance(module, (nn.Linear, nn.Conv2d))
    ]
    with torch.no_grad():
        model(X[:1])
    for handle in handles:
        handle.remove()
    return counts


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


if __name__ == "__main__":
    main()
