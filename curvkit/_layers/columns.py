r"""One layer's products with ``k`` columns laid out sample-major, ``[N, k·P]``.

For a layer ``z = W a + b`` (``nn.Linear``) or ``z = W ⋆ a + b`` (a convolution whose columns
stack, :mod:`.convolution`) and per-sample tangents flattened to ``[N, k·P]`` (``P`` entries
per sample; the ``k`` columns of a sample side by side), each product is one matrix product or
one convolution for all columns:

- :func:`parameter_tangents`: ``V a + v`` for parameter tangents ``(V, v)``;
- :func:`propagated`: ``W ȧ`` for input tangents ``ȧ``;
- :func:`transposed`: ``Wᵀ ġ`` (also ``Vᵀ g`` with ``V`` rearranged as a weight);
- :func:`weight_products`: ``Σ_n ġ_n a_nᵀ + g_n ȧ_nᵀ``, the weight's part of a gradient's
  directional derivative (the second term left out: ``Jᵀ`` of the layer factors);
- :func:`bias_products`: ``Σ_n ġ_n``.

Sums are accumulated in place where a partial result is given (``addmm_``), so that they cost
no separate pass over memory.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from curvkit._layers.convolution import input_gradient, kernel_tangents, weight_gradient


def parameter_tangents(
    module: nn.Module,
    inputs: Tensor,
    output_shape: tuple[int, ...],
    weight: Tensor | None,
    bias: Tensor | None,
) -> Tensor | None:
    """``V_l a_{l-1} + v_l`` as ``[N, k·P]`` (``None`` if the layer's parameters have no tangent)."""
    if weight is None and bias is None:
        return None
    if type(module) is not nn.Linear:  # contiguous: a bias alone comes expanded, sums go into it
        tangents = kernel_tangents(module, inputs, output_shape, weight, bias)
        return tangents.reshape(inputs.shape[0], -1).contiguous()
    if weight is None:
        return bias.reshape(1, -1).expand(inputs.shape[0], -1).clone()
    by_rows = weight.reshape(-1, weight.shape[2]).T
    if bias is None:
        return inputs @ by_rows
    return torch.addmm(bias.reshape(1, -1), inputs, by_rows)


def propagated(
    module: nn.Module,
    input_tangent: Tensor,
    input_shape: tuple[int, ...],
    num_columns: int,
    into: Tensor | None,
) -> Tensor:
    """``into + W_l ȧ`` for ``ȧ`` ``[N, k·P_in]``, as ``[N, k·P]`` (in place where ``into`` is given)."""
    num_samples = input_shape[0]
    weight = module.weight.detach()
    if type(module) is nn.Linear:
        flat = input_tangent.view(num_samples * num_columns, -1)
        if into is None:
            return (flat @ weight.T).view(num_samples, -1)
        into.view(flat.shape[0], -1).addmm_(flat, weight.T)
        return into
    stacked = input_tangent.view(num_samples * num_columns, *input_shape[1:])
    convolved = module._conv_forward(stacked, weight, None).view(num_samples, -1)
    return convolved if into is None else into.add_(convolved)


def transposed(
    module: nn.Module,
    gradients: Tensor,
    weight: Tensor,
    input_shape: tuple[int, ...],
    output_shape: tuple[int, ...],
    into: Tensor | None = None,
) -> Tensor:
    """``into + Wᵀ g`` for ``g`` of ``M`` rows of ``output_shape``, ``weight`` mapping ``input_shape[1:]``.

    Returns ``[M, *input_shape[1:]]`` flattened per row (in ``into``'s memory where given): a
    matrix product for ``nn.Linear``, a transposed convolution else.
    """
    weight = weight.detach()
    num_rows = input_shape[0]
    if type(module) is nn.Linear:
        rows = gradients.reshape(num_rows, -1)
        if into is None:
            return rows @ weight
        return into.view(num_rows, -1).addmm_(rows, weight)
    rows = gradients.view(num_rows, -1, *output_shape[1:])
    pulled_back = input_gradient(module, rows, weight, input_shape[2:]).view(num_rows, -1)
    return pulled_back if into is None else into.view(num_rows, -1).add_(pulled_back)


def weight_products(
    module: nn.Module,
    inputs: Tensor,
    output_shape: tuple[int, ...],
    gradient_tangent: Tensor,
    gradients: Tensor | None,
    input_tangent: Tensor | None,
    weight: Tensor,
) -> Tensor:
    """``Σ_n ġ_n a_nᵀ (+ g_n ȧ_nᵀ)`` as ``[k, *W.shape]`` (``weight``: the tangent, for its shape).

    ``ġ`` ``[N, k·P]``; the second term only where the input tangents ``ȧ`` ``[N, k·P_in]`` (and
    the gradients ``g`` ``[N, P]``) are given.
    """
    num_samples, num_columns = inputs.shape[0], weight.shape[0]
    if type(module) is nn.Linear:
        product = (gradient_tangent.T @ inputs).view(weight.shape)
        if input_tangent is not None:
            columns = input_tangent.view(num_samples, num_columns, -1).transpose(0, 1)
            product.baddbmm_(gradients.T.expand(num_columns, -1, -1), columns)
        return product
    out_channels, in_channels = weight.shape[1:3]
    stacked_outputs = gradient_tangent.view(num_samples, num_columns * out_channels, *output_shape[1:])
    product = weight_gradient(
        module, inputs, stacked_outputs, (num_columns * out_channels, *weight.shape[2:])
    )
    product = product.view(weight.shape)
    if input_tangent is not None:  # the columns as k·C input channels
        stacked_inputs = input_tangent.view(num_samples, num_columns * in_channels, *inputs.shape[2:])
        kernels = weight_gradient(
            module,
            stacked_inputs,
            gradients.view(num_samples, *output_shape),
            (out_channels, num_columns * in_channels, *weight.shape[3:]),
        )
        product += kernels.view(out_channels, num_columns, *weight.shape[2:]).transpose(0, 1)
    return product


def bias_products(gradient_tangent: Tensor, num_columns: int, output_shape: tuple[int, ...]) -> Tensor:
    """``Σ_n ġ_n`` summed over positions too, as ``[k, out]``, for ``ġ`` ``[N, k·P]``."""
    rows = gradient_tangent.shape[0]
    return gradient_tangent.view(rows, num_columns, output_shape[0], -1).sum((0, 3))
