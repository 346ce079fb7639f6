"""Products of linear operators as nodes of PyTorch's autograd (reverse and forward mode).

A product ``A X`` is computed outside autograd and attached to the graph of ``X`` afterwards by
:class:`AdjointBackward`; see :meth:`curvkit.linear_operator.LinearOperator._product`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd import forward_ad


def may_carry_tangent(X: Tensor) -> bool:
    """Whether ``X`` may carry a forward-mode tangent (``forward_ad``, ``torch.func.jvp``)."""
    try:
        return forward_ad.unpack_dual(X).tangent is not None
    except RuntimeError:  # batched by torch.func.vmap (jacfwd over jacrev): attaching is exact anyway
        return True


class AdjointBackward(torch.autograd.Function):
    """Attach ``A X`` (or ``Aᵀ X``), computed outside, to the graph of ``X``.

    Exact because the product is linear in ``X``: its backward is ``ḡ ↦ Aᵀ ḡ`` (or ``A ḡ``),
    itself a product, so differentiable again; its forward-mode derivative is ``Ẋ ↦ A Ẋ``.
    Computing inside ``forward`` instead would run with forward-mode AD off, and silently zero
    the Jacobian products of curvature operators.
    """

    generate_vmap_rule = True  # torch.func.vmap over it (jacfwd, jacrev): products are batched

    @staticmethod
    def forward(operator: Any, transpose: bool, X: Tensor, product: Tensor) -> Tensor:
        return product

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.operator, ctx.transpose = inputs[:2]

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[None, None, Tensor, None]:
        return None, None, ctx.operator._product(grad_output, not ctx.transpose), None

    @staticmethod
    def jvp(ctx: Any, _operator: None, _transpose: None, X_tangent: Tensor, _product: None) -> Tensor:
        """Forward mode: the tangent of ``A X`` is ``A Ẋ``."""
        return ctx.operator._product(X_tangent, ctx.transpose)
