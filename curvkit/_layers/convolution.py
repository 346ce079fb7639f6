r"""Convolutions (1d, 2d, 3d; stride, padding, dilation): ``z_n = W ⋆ a_n + b``.

Per sample and output position ``r``, ``z_{n,r} = W ψ(a_n)_r + b`` with ``ψ(a_n)_r`` the input
patch under the kernel (:func:`unfolded`), so per-sample gradients are ``Σ_r g_{n,r} ψ(a_n)_rᵀ``
(:mod:`.rule`; the GGN diagonal and EKFAC), as in BackPACK and ASDL.

Blocks of columns: ``k`` kernels as ``k · out`` channels of one convolution. A convolution is
linear in its kernel and in its input, so products with
``k`` kernel tangents ``V_1, …, V_k`` batch without a loop over the columns:

- ``V_j ⋆ a`` for every ``j`` is one convolution of ``a`` with the kernels stacked along the
  output channels (:func:`kernel_tangents`), the result laid out ``[N, k·out, *spatial]``, that
  is sample-major ``[N, k, out, *spatial]``;
- ``Σ_n ġ_{j,n} ⋆ a_n`` (the kernel's gradient) for every ``j`` is one weight gradient of that
  stacked convolution (:func:`weight_gradient`);
- ``Wᵀ ġ`` (the input's gradient) is a transposed convolution (:func:`input_gradient`); with the
  ``k`` kernels ``V_j`` stacked along the input channels, ``V_jᵀ g`` for every ``j`` is one too.

Only ungrouped convolutions with zero padding given as numbers are supported
(:meth:`ConvolutionRule.refusal`): groups would mix the stacked channels, and other padding is not
that of the transposed convolution or of the unfolding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional

from curvkit._layers.rule import LayerRule

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

_WEIGHT_GRADIENTS = {
    nn.Conv1d: torch.nn.grad.conv1d_weight,
    nn.Conv2d: torch.nn.grad.conv2d_weight,
    nn.Conv3d: torch.nn.grad.conv3d_weight,
}
_TRANSPOSED = {1: functional.conv_transpose1d, 2: functional.conv_transpose2d, 3: functional.conv_transpose3d}


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


TRANSPOSED_ROWS = 256
"""Rows per transposed convolution: oneDNN is slower on many rows at once than on chunks of them
(measured: docs/design-notes.md, "The GGN diagonal through the rules")."""


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
    if output_gradients.shape[0] <= TRANSPOSED_ROWS:
        return transposed_convolution(
            output_gradients, kernels, input_spatial, module.stride, module.padding, module.dilation
        )
    result = output_gradients.new_empty(output_gradients.shape[0], kernels.shape[1], *input_spatial)
    for start in range(0, output_gradients.shape[0], TRANSPOSED_ROWS):
        rows = slice(start, start + TRANSPOSED_ROWS)
        result[rows] = transposed_convolution(  # copied into place: no contiguous copy first
            output_gradients[rows],
            kernels,
            input_spatial,
            module.stride,
            module.padding,
            module.dilation,
            contiguous=False,
        )
    return result


def transposed_convolution(
    output_gradients: Tensor,
    kernels: Tensor,
    input_spatial: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int = 1,
    contiguous: bool = True,
) -> Tensor:
    """The transpose of a convolution of this geometry, onto inputs of spatial shape ``input_spatial``.

    The input's size fixes the output padding: a strided convolution maps several input sizes to
    one output size. Contiguous result unless ``contiguous=False`` (then possibly channels-last).
    """
    output_padding = [
        size - ((out - 1) * step - 2 * pad + spread * (kernel - 1) + 1)
        for size, out, step, pad, spread, kernel in zip(
            input_spatial, output_gradients.shape[2:], stride, padding, dilation, kernels.shape[2:]
        )
    ]
    if output_gradients.ndim == 4:
        # channels-last in, contiguous out: oneDNN copies a planar output
        # (design notes, "Measurements behind the code")
        output_gradients = output_gradients.contiguous(memory_format=torch.channels_last)
    transpose = _TRANSPOSED[output_gradients.ndim - 2]
    result = transpose(output_gradients, kernels, None, stride, padding, output_padding, groups, dilation)
    return result.contiguous() if contiguous else result


def _padded(module: nn.Module, inputs: Tensor) -> Tensor:
    """``inputs`` with the convolution's zero padding around its spatial axes (the last ones)."""
    padding = [side for pad in reversed(module.padding) for side in (pad, pad)]
    return functional.pad(inputs, padding) if any(padding) else inputs


def _num_positions(module: nn.Module, inputs: Tensor) -> int:
    """Output positions of the convolution per sample (``inputs``: spatial axes last)."""
    spatial = inputs.shape[-len(module.kernel_size) :]
    return math.prod(
        (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
        for size, pad, dilation, kernel, stride in zip(
            spatial, module.padding, module.dilation, module.kernel_size, module.stride
        )
    )


def _windows(module: nn.Module, padded: Tensor, first: int) -> Tensor:
    """Views of the kernel's windows over the spatial axes ``first, first + 1, …`` of ``padded``.

    ``Tensor.unfold`` per spatial axis appends the window's axis at the end; dilation takes
    every ``d``-th entry of a window.
    """
    windows = padded
    for dim, (size, step, spread) in enumerate(zip(module.kernel_size, module.stride, module.dilation)):
        windows = windows.unfold(first + dim, (size - 1) * spread + 1, step)
        if spread > 1:
            windows = windows[..., ::spread]
    return windows


def unfolded(module: nn.Module, inputs: Tensor) -> Tensor:
    """``ψ(a)``: the input patches under the kernel, ``[N, R, C·∏kernel]`` for ``R`` output positions.

    Windows of the zero-padded input as strided views (``Tensor.unfold`` per spatial dimension,
    dilation by taking every ``d``-th entry), copied once into ``[N, C·∏kernel, R]`` (the order
    of ``F.unfold``) and returned as its transposed view: the copy then runs along the positions,
    which lie next to each other in the input, and the products take the view as it is.
    ``F.unfold`` (``im2col``) copies the same entries at a fraction of the speed (design notes,
    "Patches by windows"). Exact: patches are copies, not products with one-hot kernels (which
    a GPU may run in TF32).
    """
    dims = len(module.kernel_size)
    windows = _windows(module, _padded(module, inputs), first=2)
    # [N, C, *positions, *kernel] -> [N, C, *kernel, *positions]
    order = [0, 1, *range(2 + dims, 2 + 2 * dims), *range(2, 2 + dims)]
    patches = windows.permute(order).reshape(
        inputs.shape[0], inputs.shape[1] * math.prod(module.kernel_size), -1
    )
    return patches.transpose(1, 2)


CHANNELS_LAST_MIN = 16
"""Input channels from which :meth:`ConvolutionRule.gram_grid` takes patches channels-last."""

CHANNELS_LAST_ROWS = 1.0
"""Patch rows per feature (``C · ∏kernel``) of a batch from which :meth:`ConvolutionRule.gram_grid`
takes patches channels-last. They copy faster, by about ``rows × features`` entries' worth per
batch, but their Gram matrix is reordered once, ``features²`` entries: with fewer rows than
features the reordering costs more than one batch saves (ResNet-18's last stage on a batch of 8
images: 128 rows of 4,608 features; design notes, "Channels-last patches")."""


def channels_last_patches(module: nn.Module, inputs: Tensor) -> Tensor:
    """``ψ(a)`` with its features ordered ``(*kernel, C)``: ``[N, R, ∏kernel·C]``, contiguous.

    The zero-padded input is copied channels-last first, so that the patches' copy moves runs of
    ``C`` adjacent entries; :func:`unfolded`'s order ``(C, *kernel)`` moves runs along the
    output positions, as short as a row of them (8 entries for a stride-2 convolution on
    ``16 × 16``). Design notes, "Channels-last patches".
    """
    dims = len(module.kernel_size)
    channels_last = _padded(module, inputs).movedim(1, -1).contiguous()  # [N, *spatial, C]
    windows = _windows(module, channels_last, first=1)
    # [N, *positions, C, *kernel] -> [N, *positions, *kernel, C]
    order = [0, *range(1, 1 + dims), *range(2 + dims, 2 + 2 * dims), 1 + dims]
    features = module.in_channels * math.prod(module.kernel_size)
    return windows.permute(order).reshape(inputs.shape[0], -1, features)


class ConvolutionRule(LayerRule):
    """``nn.Conv1d``, ``nn.Conv2d``, ``nn.Conv3d`` (exactly these types), ungrouped, numeric zero padding."""

    module_types = CONVOLUTIONS

    @classmethod
    def refusal(cls, module: nn.Module) -> str | None:
        if module.groups != 1:
            return f"groups={module.groups} (only groups=1 is supported)"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r} (only 'zeros' is supported)"
        if isinstance(module.padding, str):
            return f"padding={module.padding!r} (give the padding as numbers)"
        return None

    @classmethod
    def has_sample_rows(cls, module: nn.Module, inputs: Tensor) -> bool:
        return inputs.ndim == 2 + len(module.kernel_size)

    @classmethod
    def stacks_columns(cls, module: nn.Module, inputs: Tensor) -> bool:
        return cls.has_sample_rows(module, inputs)

    @classmethod
    def input_rows(cls, module: nn.Module, inputs: Tensor) -> Tensor:
        return unfolded(module, inputs)

    @classmethod
    def gram_rows(cls, module: nn.Module, inputs: Tensor) -> Tensor:
        return channels_last_patches(module, inputs)

    @classmethod
    def gram_grid(cls, module: nn.Module, inputs: Tensor) -> tuple[int, int] | None:
        kernel = math.prod(module.kernel_size)
        rows = math.prod(inputs.shape[: -len(module.kernel_size) - 1]) * _num_positions(module, inputs)
        if module.in_channels < CHANNELS_LAST_MIN or rows < CHANNELS_LAST_ROWS * module.in_channels * kernel:
            return None
        return kernel, module.in_channels  # feature (c, k) sits at k·C + c

    @classmethod
    def output_rows(cls, module: nn.Module, output_gradients: Tensor) -> Tensor:
        return output_gradients.flatten(3).transpose(2, 3)

    # ------------------------------------------------------------------ k columns, [N, k·P]
    @classmethod
    def parameter_tangents(
        cls,
        module: nn.Module,
        inputs: Tensor,
        output_shape: tuple[int, ...],
        weight: Tensor | None,
        bias: Tensor | None,
    ) -> Tensor | None:
        """``V ⋆ a + v`` as ``[N, k·P]`` (contiguous: a bias alone comes expanded, sums go into it)."""
        if weight is None and bias is None:
            return None
        tangents = kernel_tangents(module, inputs, output_shape, weight, bias)
        return tangents.reshape(inputs.shape[0], -1).contiguous()

    @classmethod
    def tangents_by_position(
        cls,
        module: nn.Module,
        inputs: Tensor,
        output_shape: tuple[int, ...],
        weight: Tensor | None,
        bias: Tensor | None,
    ) -> Tensor:
        """``V ⋆ a + v`` as ``[N, P, k]``: one convolution with the columns' kernels stacked."""
        num_columns = (weight if weight is not None else bias).shape[0]
        tangents = kernel_tangents(module, inputs, output_shape, weight, bias)
        return tangents.reshape(inputs.shape[0], num_columns, -1).transpose(1, 2)

    @classmethod
    def propagated(
        cls,
        module: nn.Module,
        input_tangent: Tensor,
        input_shape: tuple[int, ...],
        num_columns: int,
        into: Tensor | None,
    ) -> Tensor:
        """``into + W ⋆ ȧ`` for ``ȧ`` ``[N, k·P_in]``, as ``[N, k·P]`` (in place where ``into`` is given)."""
        num_samples = input_shape[0]
        stacked = input_tangent.view(num_samples * num_columns, *input_shape[1:])
        convolved = module._conv_forward(stacked, module.weight.detach(), None).view(num_samples, -1)
        return convolved if into is None else into.add_(convolved)

    @classmethod
    def transposed(
        cls,
        module: nn.Module,
        gradients: Tensor,
        weight: Tensor,
        input_shape: tuple[int, ...],
        output_shape: tuple[int, ...],
        into: Tensor | None = None,
    ) -> Tensor:
        """``into + Wᵀ g`` (a transposed convolution) for ``M = input_shape[0]`` rows of ``output_shape``."""
        num_rows = input_shape[0]
        rows = gradients.view(num_rows, -1, *output_shape[1:])
        pulled_back = input_gradient(module, rows, weight.detach(), input_shape[2:]).view(num_rows, -1)
        return pulled_back if into is None else into.view(num_rows, -1).add_(pulled_back)

    @classmethod
    def weight_products(
        cls,
        module: nn.Module,
        inputs: Tensor,
        output_shape: tuple[int, ...],
        gradient_tangent: Tensor,
        gradients: Tensor | None,
        input_tangent: Tensor | None,
        weight: Tensor,
    ) -> Tensor:
        """``Σ_n ġ_n ⋆ a_n (+ g_n ⋆ ȧ_n)`` as ``[k, *W.shape]``: kernel gradients of stacked channels."""
        num_samples, num_columns = inputs.shape[0], weight.shape[0]
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

    @classmethod
    def bias_products(
        cls, gradient_tangent: Tensor, num_columns: int, output_shape: tuple[int, ...]
    ) -> Tensor:
        """``Σ_n ġ_n`` summed over positions too, as ``[k, out]``, for ``ġ`` ``[N, k·P]``."""
        rows = gradient_tangent.shape[0]
        return gradient_tangent.view(rows, num_columns, output_shape[0], -1).sum((0, 3))
