r"""The parameter-free stretch of a layer chain after a layer: activations, pooling, reshapes.

A segment maps a layer's output ``z`` to the next layer's input ``a = S(z)``. It is a sequence
of steps, each fixed by the batch's forward pass:

- elementwise modules (composed where adjacent): ``a = φ(z)``, with ``φ'`` and ``φ''`` from
  autograd on the modules alone, so any elementwise module works;
- pooling: max pooling is the selection of the forward pass's maxima, average pooling a
  depthwise convolution with a uniform kernel, both linear maps ``P`` of zero curvature;
- ``nn.Flatten``: a reshape, nothing in the layout ``[N, k·P]`` of the tangents.

:meth:`SegmentRecord.push` carries tangents forward (``ȧ = S'(z) ż``), :meth:`SegmentRecord.pull`
carries cotangents back and adds the curvature (``ġ = S'(z)ᵀ γ̇ + Σ φ'' ⊙ γ ⊙ ż`` at each
elementwise step, with ``γ`` the gradient at its output, recorded by
:meth:`SegmentRecord.gradient`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional

from curvkit._layers.convolution import transposed_convolution

ELEMENTWISE = (
    nn.Identity, nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardswish,
    nn.LogSigmoid, nn.Tanhshrink, nn.Dropout,
)  # fmt: skip
"""Module types that act elementwise (``nn.Dropout`` in eval mode only: then it is the identity)."""

PIECEWISE_LINEAR = (nn.Identity, nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh, nn.Dropout, nn.Flatten)
"""Module types without a second derivative (``φ'' = 0`` wherever it exists)."""

MAX_POOLS = {
    nn.MaxPool1d: functional.max_pool1d,
    nn.MaxPool2d: functional.max_pool2d,
    nn.MaxPool3d: functional.max_pool3d,
}
"""Max pooling, with the functions that also return the maxima's positions."""
AVERAGE_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
"""Average pooling: a depthwise convolution with a uniform kernel."""


def admissible(module: nn.Module) -> bool:
    """Whether ``module`` may stand in a segment (module docstring)."""
    kind = type(module)
    if kind is nn.Flatten:
        return (module.start_dim, module.end_dim) == (1, -1)
    if kind in MAX_POOLS:
        return not (module.ceil_mode or module.return_indices)
    if kind in AVERAGE_POOLS:  # a uniform depthwise kernel: every window divides by its size
        padding = module.padding if isinstance(module.padding, tuple) else (module.padding,)
        return (
            not module.ceil_mode
            and module.divisor_override is None
            and (module.count_include_pad or not any(padding))
        )
    return kind in ELEMENTWISE


@dataclass
class _Elementwise:
    """``φ'(z)`` and, where ``φ'' ≠ 0``, ``φ''(z)`` (then ``φ''(z) ⊙ γ``), flattened ``[N, P]``."""

    slope: Tensor
    curvature: Tensor | None


@dataclass
class _Pool:
    """A pooling step: the module, its input's shape per sample, and the maxima's positions."""

    module: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    indices: Tensor | None  # max pooling: [N, C, spatial_out] flattened over space


@dataclass
class SegmentRecord:
    """A segment's steps on one batch (module docstring)."""

    steps: list[_Elementwise | _Pool] = field(default_factory=list)

    def gradient(self, output_gradient: Tensor) -> Tensor:
        """``S'(z)ᵀ γ`` for ``γ`` ``[N, P_out]``; turns each ``φ''`` into ``φ'' ⊙ γ`` on the way."""
        gradient = output_gradient
        for step in reversed(self.steps):
            if isinstance(step, _Pool):
                gradient = _pool_transposed(step, gradient, 1)
                continue
            if step.curvature is not None:
                step.curvature = step.curvature * gradient
            gradient = step.slope * gradient
        return gradient

    def transposed(self, cotangent: Tensor, num_columns: int) -> Tensor:
        """``S'(z)ᵀ γ̇`` for ``γ̇`` ``[N, k·P_out]`` (owned: scaled in place), without curvature terms."""
        for step in reversed(self.steps):
            if isinstance(step, _Pool):
                cotangent = _pool_transposed(step, cotangent, num_columns)
            else:
                cotangent = _times(step.slope, cotangent, num_columns, in_place=True)
        return cotangent

    def push(self, tangent: Tensor, num_columns: int) -> tuple[Tensor, list[Tensor | None]]:
        """``S'(z) ż`` for ``ż`` ``[N, k·P_in]``, and the tangents the curvature terms need."""
        saved: list[Tensor | None] = []
        for step in self.steps:
            if isinstance(step, _Pool):
                saved.append(None)
                tangent = _pool_forward(step, tangent, num_columns)
            else:
                saved.append(tangent if step.curvature is not None else None)
                tangent = _times(step.slope, tangent, num_columns)
        return tangent, saved

    def pull(self, cotangent: Tensor, saved: list[Tensor | None], num_columns: int) -> Tensor:
        """``S'(z)ᵀ γ̇ + Σ φ'' ⊙ γ ⊙ ż`` for ``γ̇`` ``[N, k·P_out]`` (owned: scaled in place)."""
        for step, tangent in zip(reversed(self.steps), reversed(saved)):
            if isinstance(step, _Pool):
                cotangent = _pool_transposed(step, cotangent, num_columns)
                continue
            cotangent = _times(step.slope, cotangent, num_columns, in_place=True)
            if step.curvature is not None:
                rows = cotangent.shape[0]
                cotangent.view(rows, num_columns, -1).addcmul_(
                    step.curvature.unsqueeze(1), tangent.view(rows, num_columns, -1)
                )
        return cotangent


def run(
    modules: tuple[nn.Module, ...], values: Tensor, second_derivatives: bool = True
) -> tuple[Tensor, SegmentRecord]:
    """Evaluate the segment on a batch's layer output and record its steps (``φ''`` if asked for)."""
    record, pending = SegmentRecord(), []
    for module in (*modules, None):
        if module is not None and type(module) not in MAX_POOLS and type(module) not in AVERAGE_POOLS:
            pending.append(module)
            continue
        # the elementwise modules (and reshapes) since the last pooling, as one φ
        if any(type(step) not in _IDENTITIES for step in pending):
            values, slope, curvature = _elementwise_derivatives(tuple(pending), values, second_derivatives)
            record.steps.append(_Elementwise(slope, curvature))
        else:
            for step in pending:
                values = step(values)
        pending = []
        if module is not None:
            values = _pool(module, values, record)
    return values, record


_IDENTITIES = (nn.Identity, nn.Flatten, nn.Dropout)  # dropout in eval mode: checked per batch
_RELU_OR_IDENTITY = (nn.ReLU, *_IDENTITIES)


def _pool(module: nn.Module, values: Tensor, record: SegmentRecord) -> Tensor:
    indices = None
    if type(module) in MAX_POOLS:
        pooled, indices = MAX_POOLS[type(module)](
            values, module.kernel_size, module.stride, module.padding, module.dilation, return_indices=True
        )
        indices = indices.flatten(2)
    else:
        pooled = module(values)
    record.steps.append(_Pool(module, tuple(values.shape[1:]), tuple(pooled.shape[1:]), indices))
    return pooled


def _pool_forward(step: _Pool, tangent: Tensor, num_columns: int) -> Tensor:
    """``P ż`` for ``ż`` ``[N, k·P_in]``, as ``[N, k·P_out]``."""
    rows, channels = tangent.shape[0], step.input_shape[0]
    if step.indices is None:  # average pooling is linear
        stacked = tangent.view(rows * num_columns, *step.input_shape)
        return step.module(stacked).view(rows, -1)
    columns = tangent.view(rows, num_columns, channels, -1)
    positions = step.indices.unsqueeze(1).expand(-1, num_columns, -1, -1)
    return columns.gather(3, positions).view(rows, -1)


def _pool_transposed(step: _Pool, cotangent: Tensor, num_columns: int) -> Tensor:
    """``Pᵀ γ̇`` for ``γ̇`` ``[N, k·P_out]``, as ``[N, k·P_in]``."""
    rows, channels = cotangent.shape[0], step.input_shape[0]
    if step.indices is not None:  # the maxima's positions receive what their windows got
        positions = step.indices.unsqueeze(1).expand(-1, num_columns, -1, -1)
        spread = cotangent.new_zeros(rows, num_columns, channels, math.prod(step.input_shape[1:]))
        spread.scatter_add_(3, positions, cotangent.view(rows, num_columns, channels, -1))
        return spread.view(rows, -1)
    module = step.module
    dims = len(step.input_shape) - 1
    kernel = _tuple(module.kernel_size, dims)
    weight = cotangent.new_full((channels, 1, *kernel), 1.0 / math.prod(kernel))
    stacked = cotangent.view(rows * num_columns, *step.output_shape)
    transposed = transposed_convolution(
        stacked,
        weight,
        step.input_shape[1:],
        _tuple(module.stride, dims),
        _tuple(module.padding, dims),
        (1,) * dims,
        groups=channels,
    )
    return transposed.view(rows, -1)


def _tuple(value, dims: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


def _elementwise_derivatives(
    activation: tuple[nn.Module, ...], pre_activation: Tensor, second: bool = True
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``φ(z)``, and ``φ'(z)`` and ``φ''(z)`` flattened per sample, of the composed modules.

    Reverse mode, since ``φ`` acts elementwise: ``φ'(z) = ∇_z Σ_i φ(z)_i`` and
    ``φ''(z) = ∇_z Σ_i φ'(z)_i`` (forward mode lacks second derivatives of SiLU and others).
    ``None`` for a second derivative that is zero (or not asked for: ``second=False``).
    """
    if all(type(module) in _RELU_OR_IDENTITY for module in activation):
        # φ' = 1 where z > 0, else 0 (autograd's choice at 0): the sign of φ(z) ≥ 0, one pass
        # (a comparison converted to floats takes two); φ'' = 0: no graph to build
        values = pre_activation.detach()
        for module in activation:
            values = torch.relu(values) if type(module) is nn.ReLU else module(values)
        return values, torch.sign(values).flatten(1), None
    with torch.enable_grad():
        values = leaf = pre_activation.detach().requires_grad_()
        values = values.clone()  # in-place activations must not overwrite z
        for module in activation:
            values = module(values)
        piecewise_linear = not second or all(type(module) in PIECEWISE_LINEAR for module in activation)
        ones = torch.ones_like(values)
        (slope,) = torch.autograd.grad(values, leaf, ones, create_graph=not piecewise_linear)
        curvature = (
            None
            if piecewise_linear
            else torch.autograd.grad(slope, leaf, torch.ones_like(slope))[0].flatten(1)
        )
    return values.detach(), slope.detach().flatten(1), curvature


def _times(factor: Tensor, tangent: Tensor, num_columns: int = 1, in_place: bool = False) -> Tensor:
    """``factor ⊙ tangent`` per column: ``factor`` ``[N, d]``, ``tangent`` ``[N, k·d]``."""
    columns = tangent.view(tangent.shape[0], num_columns, -1)
    scaled = columns.mul_(factor.unsqueeze(1)) if in_place else columns * factor.unsqueeze(1)
    return scaled.view(tangent.shape[0], -1)
