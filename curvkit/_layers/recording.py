r"""``nn.Linear`` layers whose per-sample gradients factor into an input and an output part.

A linear layer ``z_n = W a_n + b`` applied once to a batch of rows ``a_n``, one per sample, has
per-sample gradients ``∂ℓ_n/∂W = g_n a_nᵀ`` and ``∂ℓ_n/∂b = g_n`` with ``g_n = ∂ℓ_n/∂z_n``. So
sums of their squares need no per-sample gradient at all:

.. math::
    \sum_n \sum_k (g_{n,k} a_n^\top)^{\odot 2} = \Big(\sum_k G_k^{\odot 2}\Big)^\top A^{\odot 2},

one matrix product over the batch (``G_k`` the rows ``g_{n,k}``, ``A`` the rows ``a_n``). This
module finds such layers among the parameters and records their inputs and outputs during a
forward pass; it is the seam that Kronecker-factored curvature (KFAC) will also use. For
products with ``Jᵀ Λ J`` (:mod:`.jtlj`) it also finds convolutions, whose per-sample Jacobians
factor position by position.

A layer qualifies in a pass only if it is exactly ``nn.Linear`` (a subclass may compute
something else) without forward hooks of its own or global ones (they may change its output),
its weight or bias is one of ``params``, it ran once, on a ``[N, in]`` input of the batch's
``N`` rows that is computed from the batch input (not, say, a table of positions that happens
to have ``N`` rows; the caller tells, see :func:`factored`), that call's output leads to the
model's, and its parameters that require grad enter the autograd graph of the output exactly
once, in that call (so no other code uses them: weight tying, a second call). Samples must not
be coupled (as for every per-sample method): then rows computed from the batch, ``N`` of them,
are one per sample, in some order, and the sum of squares does not depend on the order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.utils._pytree import tree_map

from curvkit._layers.convolution import factorable, input_dims
from curvkit._model.kernels import differentiable_kernels


@dataclass
class LinearLayer:
    """A layer whose weight or bias (or both) are among the parameters, by position.

    ``nn.Linear`` or, where asked for, a convolution whose columns stack
    (:func:`curvkit._layers.convolution.factorable`).
    """

    module: nn.Module
    weight_index: int | None
    bias_index: int | None
    # per call: (input, output, input version), or None for a call without a tensor input
    calls: list[tuple[Tensor, Tensor, int] | None] = field(default_factory=list)


def linear_layers(model: nn.Module, tensors: list[Tensor], convolutions: bool = False) -> list[LinearLayer]:
    """The ``nn.Linear`` modules of ``model`` with a weight or bias among ``tensors`` (by identity).

    With ``convolutions``, also the convolutions whose per-sample Jacobians factor.
    """
    index = {id(tensor): position for position, tensor in enumerate(tensors)}
    layers = []
    for module in model.modules():
        if type(module) is nn.Linear or (convolutions and factorable(module)):
            weight_index = index.get(id(module.weight))
            bias_index = None if module.bias is None else index.get(id(module.bias))
            if weight_index is not None or bias_index is not None:
                layers.append(LinearLayer(module, weight_index, bias_index))
    return layers


@contextmanager
def recording(layers: list[LinearLayer]) -> Iterator[None]:
    """Record each layer's ``(input, output)`` per call while the context is open.

    The model continues with a copy of each output (an in-place operation after the layer
    would otherwise change the recorded one); the input's version counter is recorded to detect
    an in-place change of it later in the pass. The records are dropped when the context closes:
    they hold the pass's autograd graph.
    """

    def hook_for(layer: LinearLayer):
        def hook(module, args, kwargs, output):
            inputs = args[0] if args else kwargs.get("input")
            layer.calls.append((inputs, output, inputs._version) if isinstance(inputs, Tensor) else None)
            # the model goes on with a copy: an in-place operation after the layer (ReLU(inplace=True))
            # must not overwrite the output whose gradient is wanted
            return output.clone()

        return hook

    handles = []
    for layer in layers:
        layer.calls.clear()
        handles.append(layer.module.register_forward_hook(hook_for(layer), with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for layer in layers:
            layer.calls.clear()


def factored(
    layers: list[LinearLayer], output: Tensor, batch_size: int, from_batch: Callable[[Tensor], bool]
) -> list[LinearLayer]:
    """The recorded layers whose per-sample gradients factor in this pass (module docstring).

    Args:
        layers: Layers recorded during the pass that computed ``output``.
        output: The model output, with its autograd graph.
        batch_size: ``N``.
        from_batch: Whether a tensor was computed from the batch input.
    """
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_hooks_with_kwargs:
        return []
    candidates = [
        layer
        for layer in layers
        if len(layer.calls) == 1
        and layer.calls[0] is not None  # called once, with a tensor input
        and len(layer.module._forward_hooks) == 1  # no hook but ours: another could change the output
        and layer.calls[0][0].ndim == input_dims(layer.module)
        and layer.calls[0][0].shape[0] == batch_size
        and layer.calls[0][0]._version == layer.calls[0][2]  # not overwritten in place since
    ]
    if not candidates:  # spare the graph walks
        return []
    uses, nodes = _uses_in_graph(output)
    return [
        layer
        for layer in candidates
        if all(uses.get(id(tensor), 0) == 1 for tensor in _parameters(layer))
        and layer.calls[0][1].grad_fn in nodes  # this call's output leads to the model's
        and all(_consumes(layer.calls[0][1].grad_fn, tensor) for tensor in _parameters(layer))
        and from_batch(layer.calls[0][0])
    ]


def _consumes(node, tensor: Tensor, depth: int = 2) -> bool:
    """Whether the autograd ``node`` takes the leaf ``tensor`` within ``depth`` steps.

    ``F.linear`` records a product node that takes the weight through its transpose.
    """
    if node is None or depth == 0:
        return False
    children = [child for child, _ in node.next_functions if child is not None]
    return any(getattr(child, "variable", None) is tensor for child in children) or any(
        _consumes(child, tensor, depth - 1) for child in children
    )


@contextmanager
def dual_numbers(X: Any) -> Iterator[tuple[Any, Callable[[Tensor], bool]]]:
    """The batch input with forward-mode tangents (zero: only their presence matters).

    Yields:
        The input to call the model with, and whether a tensor was computed from it (it has
        a tangent). Dual numbers leave ``requires_grad`` and the model's own code alone.
    """

    def with_tangent(tensor: Any) -> Any:
        if isinstance(tensor, Tensor) and tensor.is_floating_point():
            return forward_ad.make_dual(tensor, torch.zeros_like(tensor))
        return tensor

    with forward_ad.dual_level():
        yield tree_map(with_tangent, X), lambda tensor: forward_ad.unpack_dual(tensor).tangent is not None


@contextmanager
def autograd_leaves(X: Any) -> Iterator[tuple[Any, Callable[[Tensor], bool]]]:
    """The batch input as copies of leaves that require grad, for models without forward mode.

    Yields:
        The input to call the model with, and whether a tensor was computed from it (its
        autograd graph reaches one of the leaves).
    """
    leaves = []

    def traced(tensor: Any) -> Any:
        if not (isinstance(tensor, Tensor) and tensor.is_floating_point()):
            return tensor
        leaves.append(tensor.detach().requires_grad_())
        return leaves[-1].clone()

    traced_X = tree_map(traced, X)
    yield traced_X, _Reachability({id(leaf) for leaf in leaves})


TRACINGS = (dual_numbers, autograd_leaves)
"""Ways to tell layer inputs computed from the batch, in order of preference."""


def factored_forward(
    model: Callable[[Any], Tensor],
    module: nn.Module,
    X: Any,
    batch_size: int,
    layers: list[LinearLayer],
    traced: bool = True,
) -> tuple[Tensor, list[LinearLayer]]:
    """The output with its graph, and the ``layers`` that factor on this batch.

    Call it inside :func:`recording` of ``layers``. The batch input is traced (:data:`TRACINGS`:
    dual numbers, else autograd leaves) to tell which layer inputs were computed from it. A model
    that runs with neither, or without any such layer, gets none, and no graph. ``module`` is the
    network ``model`` calls (it selects the kernels, :func:`differentiable_kernels`).
    ``traced=False`` skips the tracing (it costs a pass of zero tangents with dual numbers) and
    takes every layer input of ``N`` rows as computed from the batch: for a model whose layers
    were seen to be on an earlier batch.
    """
    if not traced and layers:
        with torch.enable_grad(), differentiable_kernels(module):
            output = model(X)
            return output, factored(layers, output, batch_size, lambda tensor: True)
    with torch.enable_grad(), differentiable_kernels(module):
        for tracing in TRACINGS if layers else ():
            try:
                with tracing(X) as (traced, from_batch):
                    output = model(traced)
                    return output, factored(layers, output, batch_size, from_batch)
            except (NotImplementedError, RuntimeError):  # not on traced inputs: next way
                for layer in layers:
                    layer.calls.clear()
    with torch.no_grad(), differentiable_kernels(module):
        return model(X), []


class _Reachability:
    """Whether a tensor was computed from given leaves, by walking its autograd graph (memoized)."""

    def __init__(self, leaf_ids: set[int]):
        self.leaf_ids, self.memo = leaf_ids, {}

    def __call__(self, tensor: Tensor) -> bool:
        if id(tensor) in self.leaf_ids:
            return True
        return tensor.grad_fn is not None and self._reaches(tensor.grad_fn)

    def _reaches(self, root) -> bool:
        stack = [root]
        while stack:  # iterative post-order: deep graphs do not hit the recursion limit
            node = stack[-1]
            if node in self.memo:
                stack.pop()
                continue
            children = [child for child, _ in node.next_functions if child is not None]
            pending = [child for child in children if not (child in self.memo or hasattr(child, "variable"))]
            if pending:
                stack.extend(pending)
                continue
            self.memo[node] = any(
                id(child.variable) in self.leaf_ids if hasattr(child, "variable") else self.memo[child]
                for child in children
            )
            stack.pop()
        return self.memo[root]


def _parameters(layer: LinearLayer) -> list[Tensor]:
    """The layer's weight and bias that require grad (frozen ones are constants: no use to count)."""
    module = layer.module
    return [tensor for tensor in (module.weight, module.bias) if tensor is not None and tensor.requires_grad]


def _uses_in_graph(output: Tensor) -> tuple[dict[int, int], set]:
    """The graph's nodes, and for each leaf tensor how many of them consume it.

    Returns:
        ``{id(leaf): number of consuming nodes}`` and the set of nodes of ``output``'s graph.
    """
    uses: dict[int, int] = {}
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is None:
                continue
            variable = getattr(child, "variable", None)  # AccumulateGrad: a leaf
            if variable is not None:
                uses[id(variable)] = uses.get(id(variable), 0) + 1
            else:
                stack.append(child)
    return uses, seen


def squared_gradient_sums(layer: LinearLayer, output_gradients: Tensor) -> dict[int, Tensor]:
    """``Σ_n Σ_k`` of the squared per-sample gradients of the layer's parameters.

    Args:
        layer: A layer of :func:`factored`.
        output_gradients: ``[K, N, out]``: ``g_{n,k}`` for the layer's single call.

    Returns:
        ``{parameter index: squared sum}`` for the weight and the bias, those among the parameters.
    """
    summed = output_gradients.square().sum(0)  # [N, out]
    sums = {}
    if layer.weight_index is not None:
        sums[layer.weight_index] = summed.T @ layer.calls[0][0].detach().square()
    if layer.bias_index is not None:
        sums[layer.bias_index] = summed.sum(0)
    return sums


def layer_outputs(layers: list[LinearLayer]) -> list[Tensor]:
    """The output of each layer's single call (for gradients with respect to it)."""
    return [layer.calls[0][1] for layer in layers]
