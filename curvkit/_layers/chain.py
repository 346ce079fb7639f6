r"""Hessian products of a chain of linear layers and elementwise functions (MLPs, CNNs), by hand.

For ``nn.Sequential(L_1, φ_1, L_2, φ_2, …, L_L[, φ_L])`` with layers ``L_l`` (``nn.Linear`` or
a convolution, written ``W_l a + b_l`` below: ``W_l ⋆ a + b_l`` for a convolution, whose
``Σ_n g a^\top`` is the kernel gradient and ``W^\top`` the transposed convolution), elementwise
``φ_l`` (activations; the identity where a layer follows a layer) and a batch ``a_0``:

.. math::
    z_l = W_l a_{l-1} + b_l, \qquad a_l = φ_l(z_l), \qquad f = a_L, \qquad
    γ_L = ∇_f L, \quad g_l = φ_l'(z_l) ⊙ γ_l, \quad γ_{l-1} = W_l^\top g_l,

and the gradient is ``∇_{W_l} L = Σ_n g_{l,n} a_{l-1,n}ᵀ``, ``∇_{b_l} L = Σ_n g_{l,n}``. Its
directional derivative along ``V = (V_l, v_l)_l`` is the Hessian-vector product:

.. math::
    \dot z_l = V_l a_{l-1} + v_l + W_l \dot a_{l-1}, \quad \dot a_l = φ_l' ⊙ \dot z_l
    \quad (\dot a_0 = 0), \qquad \dot γ_L = ∇^2_f L \, \dot a_L,

    \dot g_l = φ_l' ⊙ \dot γ_l + φ_l'' ⊙ γ_l ⊙ \dot z_l, \qquad
    \dot γ_{l-1} = W_l^\top \dot g_l + V_l^\top g_l,

    (H V)_{W_l} = Σ_n \dot g_{l,n} a_{l-1,n}^\top + g_{l,n} \dot a_{l-1,n}^\top, \qquad
    (H V)_{b_l} = Σ_n \dot g_{l,n}.

These are the multiply-adds of reverse-over-reverse differentiation, without what an autograd
graph of the gradient adds: the zeros that ReLU's second derivative materializes and adds, a
separate addition for each sum, per-operation dispatch. The tangents are laid out sample-major,
``[N, k·P]`` (``P`` entries per sample), so that ``V_l a_{l-1}`` and ``Σ_n ġ_{l,n} a_{l-1,n}ᵀ``
are one matrix product (one convolution, one kernel gradient: the rules' column products,
:mod:`.rule`) for all ``k`` columns, and sums are fused into the products (``addmm``). See
``docs/design-notes.md`` for the benchmark figures.

The chain is read off the module's type: an ``nn.Sequential`` (nested ones are flattened) of
``nn.Linear`` layers and convolutions of the operator's :class:`.parameters.LayerMap` (their rules
stack columns),
each used once, and between them the modules of a segment (:mod:`.segments`: elementwise
activations, max and average pooling, ``nn.Flatten()``; pooling is a linear map ``P`` once the
forward pass fixed it, so ``φ_l`` above stands for a composition of ``φ``\ s and ``P``\ s, whose
tangents and cotangents the segment carries), all of exactly these types and without forward
hooks (a subclass or a hook may compute something else).
Every parameter of the operator must be a weight or bias of a layer, and no two layers may share
one. The batch's first axis must be the samples (a linear layer's input ``[N, in]``, a
convolution's ``[N, C, *spatial]``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from curvkit._engine import Batch
from curvkit._layers.convolution import ConvolutionRule
from curvkit._layers.linear import LinearRule
from curvkit._layers.parameters import LayerMap
from curvkit._layers.rule import LayerRule
from curvkit._layers.segments import SegmentRecord, admissible, run
from curvkit.losses import output_gradients, output_hessian_matmat


@dataclass(frozen=True)
class ChainLayer:
    """A layer of the chain, the segment after it (:mod:`.segments`), its parameters' positions."""

    module: nn.Module
    rule: type[LayerRule]
    activation: tuple[nn.Module, ...]
    weight_index: int | None
    bias_index: int | None


@dataclass(frozen=True)
class LayerChain:
    """The structure of a chain model (module docstring): input modules, then layers."""

    prefix: tuple[nn.Module, ...]
    layers: tuple[ChainLayer, ...]

    @classmethod
    def of(cls, model_func: object, layer_map: LayerMap, num_tensors: int) -> LayerChain | None:
        """The chain of ``model_func`` whose ``num_tensors`` parameters ``layer_map`` places, or ``None``."""
        if (
            type(model_func) is not nn.Sequential
            or _hooked(model_func)
            or not layer_map.covers_all(num_tensors)
        ):
            return None
        modules = list(_flattened(model_func))
        is_layer = [_chain_rule(module) is not None for module in modules]
        if any(
            not (is_layer[position] or admissible(module)) or _hooked(module)
            for position, module in enumerate(modules)
        ):
            return None
        starts = [position for position, layer in enumerate(is_layer) if layer]
        if not starts or len({id(modules[position]) for position in starts}) < len(starts):
            return None  # no layer, or one used twice
        own = [id(tensor) for position in starts for tensor in modules[position].parameters()]
        if len(set(own)) < len(own):
            return None  # weights tied between layers: their products would overwrite each other
        layers, covered = [], set()
        for start, stop in zip(starts, [*starts[1:], len(modules)]):
            module = modules[start]
            found = layer_map.of(module)
            indices = {} if found is None else found.indices
            covered |= set(indices.values())
            layers.append(
                ChainLayer(
                    module,
                    _chain_rule(module),
                    tuple(modules[start + 1 : stop]),
                    indices.get("weight"),
                    indices.get("bias"),
                )
            )
        if covered != set(range(num_tensors)):
            return None  # a parameter outside the chain's layers
        return cls(tuple(modules[: starts[0]]), tuple(layers))

    def linearize(
        self, batch: Batch, loss_func: Callable, gradients: bool = True, slopes: bool = True
    ) -> ChainLinearization | None:
        """What the batch's products need: its forward pass and (``gradients``) its gradient.

        Without ``gradients`` (the GGN diagonal: :meth:`ChainLinearization.output_gradients`
        only), the pass records no second derivatives of the activations and takes no backward
        pass. Without ``slopes`` either (KFAC's 'forward-only' factors: the layer inputs only),
        the segments run as plain modules and record no derivative (for a smooth activation that
        is an autograd pass each); nothing can be pulled back then (``segments`` is ``None``).

        Returns:
            ``None`` if the chain does not apply to the batch (layer inputs whose first axis is
            not the samples, dropout in train mode).
        """
        modules = [*self.prefix, *(module for layer in self.layers for module in layer.activation)]
        if not isinstance(batch.X, Tensor) or any(
            type(module) is nn.Dropout and module.training and module.p > 0 for module in modules
        ):
            return None
        first = min(
            position
            for position, layer in enumerate(self.layers)
            if layer.weight_index is not None or layer.bias_index is not None
        )
        with torch.no_grad():
            values = batch.X
            for module in self.prefix:  # an in-place activation must not overwrite the batch
                values = module(values.clone() if getattr(module, "inplace", False) else values)
            inputs, output_shapes, segments = [], [], []
            for layer in self.layers:
                if not layer.rule.stacks_columns(layer.module, values) or values.shape[0] != batch.size:
                    return None
                inputs.append(values)
                values = layer.module(values)
                output_shapes.append(tuple(values.shape[1:]))
                if not slopes:  # the layer's output is new: an in-place activation may overwrite it
                    for module in layer.activation:
                        values = module(values)
                    continue
                values, segment = run(layer.activation, values, second_derivatives=gradients)
                segments.append(segment)
            output = values
            layer_gradients: list[Tensor | None] = [None] * len(self.layers)
            if not gradients or not slopes:  # without slopes, no gradient either: nothing recorded
                recorded = segments if slopes else None
                return ChainLinearization(
                    self, first, inputs, output_shapes, layer_gradients, recorded, output, batch, loss_func
                )
            # backward: the pre-activation gradients g_l (the segments record φ'' ⊙ γ on the way)
            activation_gradient = output_gradients(loss_func, output, batch.y).reshape(batch.size, -1)
            for position in reversed(range(first, len(self.layers))):
                layer_gradients[position] = segments[position].gradient(activation_gradient)
                if position > first:
                    module, rule = self.layers[position].module, self.layers[position].rule
                    activation_gradient = rule.transposed(
                        module,
                        layer_gradients[position],
                        module.weight,
                        inputs[position].shape,
                        output_shapes[position],
                    )
        return ChainLinearization(
            self, first, inputs, output_shapes, layer_gradients, segments, output, batch, loss_func
        )


@dataclass(frozen=True)
class ChainLinearization:
    """One batch's forward and backward pass through a :class:`LayerChain` (per layer ``l``).

    Per-sample quantities are flattened: ``[N, P]`` for ``P`` entries per sample.

    Attributes:
        chain: The chain.
        first: The first layer with a parameter of the operator (the pass need not go below).
        inputs: ``a_{l-1}``, as the layer takes it (``[N, in]``, ``[N, C, *spatial]``).
        output_shapes: ``z_l``'s shape per sample.
        gradients: ``g_l`` ``[N, P_l]`` (``None`` below ``first``).
        segments: What follows each layer, as recorded on the batch (``None``: linearized
            without slopes, nothing to pull back).
        output: ``f``, where ``∇²_f L`` is taken.
        batch: The batch (targets and loss terms for ``∇²_f L``).
        loss_func: The loss.
    """

    chain: LayerChain
    first: int
    inputs: list[Tensor]
    output_shapes: list[tuple[int, ...]]
    gradients: list[Tensor | None]
    segments: list[SegmentRecord] | None
    output: Tensor
    batch: Batch
    loss_func: Callable

    def output_gradients(self, columns: Tensor) -> list[Tensor | None]:
        """``K`` output-space columns ``[K, *f.shape]`` pulled back to each layer's output.

        As :func:`curvkit._layers.recording.output_gradients` gives them, ``[K, N, *z_l.shape]``, for
        the layers from :attr:`first` on (``None`` below).

        The columns go back together, sample-major ``[N, K·P]``: a layer's ``Wᵀ`` is one product
        (one transposed convolution of ``N·K`` rows, in chunks) for all of them, each segment one
        elementwise product or pooling transpose, without autograd.
        """
        if self.segments is None:
            raise RuntimeError("The chain was linearized without slopes: no column can be pulled back.")
        num_columns, num_samples = columns.shape[:2]
        cotangent = columns.transpose(0, 1).reshape(num_samples, -1)  # owned: scaled in place
        result: list[Tensor | None] = [None] * len(self.chain.layers)
        for position in reversed(range(self.first, len(self.chain.layers))):
            gradient = self.segments[position].transposed(cotangent, num_columns)
            result[position] = gradient.view(
                num_samples, num_columns, *self.output_shapes[position]
            ).transpose(0, 1)
            if position > self.first:
                layer, inputs = self.chain.layers[position], self.inputs[position]
                stacked_inputs = (num_samples * num_columns, *inputs.shape[1:])
                cotangent = layer.rule.transposed(
                    layer.module, gradient, layer.module.weight, stacked_inputs, self.output_shapes[position]
                ).view(num_samples, -1)
        return result

    def matmat(self, tangents: dict[int, Tensor], memo: dict | None = None) -> dict[int, Tensor]:
        """``∇²L_b V`` for tangents ``{parameter index: [k, *θ_p.shape]}`` (the others are zero).

        ``memo``: a dict that lives as long as the tangents (one product over all batches), to
        rearrange them once, not once per batch.
        """
        memo = {} if memo is None else memo
        num_columns = next(iter(tangents.values())).shape[0]
        num_samples = self.output.shape[0]
        layers = self.chain.layers
        directions = [(tangents.get(layer.weight_index), tangents.get(layer.bias_index)) for layer in layers]
        start = min(position for position, pair in enumerate(directions) if pair != (None, None))
        # forward: ż_l and ȧ_l as [N, k·P_l]
        saved: list[list[Tensor | None]] = [[] for _ in layers]  # what the curvature terms need
        tangents_out: list[Tensor | None] = [None] * len(layers)
        previous = None
        for position in range(start, len(layers)):
            (weight, bias), module, rule = (
                directions[position],
                layers[position].module,
                layers[position].rule,
            )
            inputs, output_shape = self.inputs[position], self.output_shapes[position]
            pre_tangent = rule.parameter_tangents(module, inputs, output_shape, weight, bias)
            if previous is not None:  # + W_l ȧ_{l-1}
                pre_tangent = rule.propagated(module, previous, inputs.shape, num_columns, pre_tangent)
            previous, saved[position] = self.segments[position].push(pre_tangent, num_columns)
            tangents_out[position] = previous
        # ∇²_f L ȧ_L, then backward
        output_tangent = previous.view(num_samples, num_columns, *self.output.shape[1:]).transpose(0, 1)
        activation_tangent = (
            output_hessian_matmat(
                self.loss_func, self.output, self.batch.y, output_tangent, self.batch.loss_terms
            )
            .transpose(0, 1)
            .reshape(num_samples, -1)
        )
        result = {}
        for position in reversed(range(start, len(layers))):
            (weight, bias), layer = directions[position], layers[position]
            module, inputs, output_shape = layer.module, self.inputs[position], self.output_shapes[position]
            gradient_tangent = self.segments[position].pull(activation_tangent, saved[position], num_columns)
            if weight is not None:  # Σ_n ġ_n a_nᵀ + g_n ȧ_nᵀ
                input_tangent = tangents_out[position - 1] if position > start else None
                result[layer.weight_index] = layer.rule.weight_products(
                    module,
                    inputs,
                    output_shape,
                    gradient_tangent,
                    self.gradients[position],
                    input_tangent,
                    weight,
                )
            if bias is not None:
                result[layer.bias_index] = layer.rule.bias_products(
                    gradient_tangent, num_columns, output_shape
                )
            if position > start:  # γ̇_{l-1} = V_lᵀ g_l + W_lᵀ ġ_l
                activation_tangent = None
                if weight is not None:
                    if layer.weight_index not in memo:  # V_l with the columns among its inputs
                        memo[layer.weight_index] = weight.transpose(0, 1).reshape(
                            weight.shape[1], -1, *weight.shape[3:]
                        )
                    columns_in = (num_samples, num_columns * inputs.shape[1], *inputs.shape[2:])
                    activation_tangent = layer.rule.transposed(
                        module, self.gradients[position], memo[layer.weight_index], columns_in, output_shape
                    )
                stacked_inputs = (num_samples * num_columns, *inputs.shape[1:])
                activation_tangent = layer.rule.transposed(
                    module, gradient_tangent, module.weight, stacked_inputs, output_shape, activation_tangent
                ).view(num_samples, -1)
        return result


def _hooked(module: nn.Module) -> bool:
    """Whether ``module`` has forward hooks (which may change what it computes)."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _flattened(sequential: nn.Sequential):
    """The modules of ``sequential``, those of nested plain ``nn.Sequential`` containers in place."""
    for module in sequential:
        if type(module) is nn.Sequential and not _hooked(module):
            yield from _flattened(module)
        else:
            yield module


def _chain_rule(module: nn.Module) -> type[LayerRule] | None:
    """The rule of a layer that may stand in a chain: linear or convolution, supported exactly."""
    for rule in (LinearRule, ConvolutionRule):
        if type(module) in rule.module_types and rule.refusal(module) is None:
            return rule
    return None
