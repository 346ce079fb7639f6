r"""Convolutions with blocks of columns: ``k`` kernels as ``k · out`` channels of one convolution.

A convolution ``z = W ⋆ a + b`` is linear in its kernel and in its input, so products with
``k`` kernel tangents ``V_1, …, V_k`` batch without a loop over the columns:

- ``V_j ⋆ a`` for every ``j`` is one convolution of ``a`` with the kernels stacked along the
  output channels (:func:`kernel_tangents`), the result laid out ``[N, k·out, *spatial]``, that
  is sample-major ``[N, k, out, *spatial]``;
- ``Σ_n ġ_{j,n} ⋆ a_n`` (the kernel's gradient) for every ``j`` is one weight gradient of that
  stacked convolution (:func:`weight_gradient`);
- ``Wᵀ ġ`` (the input's gradient) is a transposed convolution (:func:`input_gradient`); with the
  ``k`` kernels ``V_j`` stacked along the input channels, ``V_jᵀ g`` for every ``j`` is one too.

Only ungrouped convolutions with zero padding given as numbers qualify
(:func:`factorable`): groups would mix the stacked channels, and other padding is not that of the
transposed convolution.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

_WEIGHT_GRADIENTS = {
    nn.Conv1d: torch.nn.grad.conv1d_weight,
    nn.Conv2d: torch.nn.grad.conv2d_weight,
    nn.Conv3d: torch.nn.grad.conv3d_weight,
}
_TRANSPOSED = {1: functional.conv_transpose1d, 2: functional.conv_transpose2d, 3: functional.conv_transpose3d}


def factorable(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution whose columns stack (module docstring)."""
    return (
        type(module) in CONVOLUTIONS
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def input_dims(module: nn.Module) -> int:
    """Dimensions of a batch's input: ``[N, in]`` for ``nn.Linear``, ``[N, C, *spatial]`` else."""
    return 2 if type(module) is nn.Linear else 2 + len(module.kernel_size)


def kernel_tangents(
    module: nn.Module,
    inputs: Tensor,
    output_shape: tuple[int, ...],
    weight: Tensor | None,
    bias: Tensor | None,
) -> Tensor:
    """``V_j ⋆ a_n + v_j`` for every column ``j`` and sample ``n``: ``[N, k·out, *spatial]``.

    Args:
        module: The convolution.
        inputs: ``a`` ``[N, C, *spatial_in]``.
        output_shape: The output's shape per sample, ``[out, *spatial]``.
        weight: ``[k, *W.shape]``, or ``None`` for zero.
        bias: ``[k, out]``, or ``None`` for zero (not both ``None``).
    """
    if weight is None:  # the bias tangent at every position
        per_channel = bias.reshape(1, -1, *[1] * (len(output_shape) - 1))
        return per_channel.expand(inputs.shape[0], -1, *output_shape[1:])
    kernels = weight.reshape(-1, *weight.shape[2:])  # [k·out, C, *kernel]
    return module._conv_forward(inputs, kernels, None if bias is None else bias.reshape(-1))


def weight_gradient(
    module: nn.Module, inputs: Tensor, output_gradients: Tensor, weight_shape: tuple[int, ...]
) -> Tensor:
    """``Σ_n`` of the kernel gradient of a convolution with ``module``'s geometry.

    Args:
        module: The convolution (stride, padding, dilation).
        inputs: ``[N, C', *spatial_in]``.
        output_gradients: ``[N, out', *spatial]``.
        weight_shape: ``[out', C', *kernel]``: with ``out' = k · out`` the ``k`` columns' kernel
            products, with ``C' = k · C`` those of ``k`` input tangents.
    """
    return _WEIGHT_GRADIENTS[type(module)](
        inputs, weight_shape, output_gradients, module.stride, module.padding, module.dilation
    )


def input_gradient(
    module: nn.Module, output_gradients: Tensor, kernels: Tensor, input_spatial: tuple[int, ...]
) -> Tensor:
    """``Wᵀ ġ``: the transposed convolution of ``output_gradients`` with ``kernels``.

    Args:
        module: The convolution (stride, padding, dilation).
        output_gradients: ``[M, out, *spatial]``.
        kernels: ``[out, C', *kernel]``.
        input_spatial: The input's spatial shape (see :func:`transposed_convolution`).

    Returns:
        ``[M, C', *input_spatial]``.
    """
    return transposed_convolution(
        output_gradients, kernels, input_spatial, module.stride, module.padding, module.dilation
    )


def transposed_convolution(
    output_gradients: Tensor,
    kernels: Tensor,
    input_spatial: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int = 1,
) -> Tensor:
    """The transpose of a convolution of this geometry, onto inputs of spatial shape ``input_spatial``.

    The input's size fixes the output padding: a strided convolution maps several input sizes to
    one output size. Contiguous result.
    """
    output_padding = [
        size - ((out - 1) * step - 2 * pad + spread * (kernel - 1) + 1)
        for size, out, step, pad, spread, kernel in zip(
            input_spatial, output_gradients.shape[2:], stride, padding, dilation, kernels.shape[2:]
        )
    ]
    if output_gradients.ndim == 4:
        # channels-last in, contiguous out: 4.3-5.0 against 5.0-5.6 ms for the benchmark CNN's
        # transposed convolutions of 16 columns on the CPU (oneDNN copies a planar output)
        output_gradients = output_gradients.contiguous(memory_format=torch.channels_last)
    transpose = _TRANSPOSED[output_gradients.ndim - 2]
    result = transpose(output_gradients, kernels, None, stride, padding, output_padding, groups, dilation)
    return result.contiguous()
