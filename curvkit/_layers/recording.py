r"""Record each supported layer's uses in a forward pass, and push output-space columns back to them.

One mechanism for every consumer (the GGN diagonal, the layer factors of ``Jᵀ Λ J``, KFAC):

1. :func:`recording`: forward hooks on the layers of a :class:`.parameters.LayerMap` record every
   call's input and output (:class:`.parameters.Use`), all calls, not only the last; the model
   continues with a copy of each output, so that an in-place operation after the layer
   (``ReLU(inplace=True)``) leaves the recorded one intact.
2. :func:`traced_forward`: the pass itself, with the batch input traced (dual numbers, else autograd
   leaves) to tell which layer inputs were computed from it, and :func:`per_sample_layers`, the
   layers whose uses are *per sample*.
3. :func:`output_gradients`: one backward pass of ``K`` output-space columns ``S`` (``Λ = S Sᵀ``, its
   Monte-Carlo sample, the empirical gradient: :mod:`curvkit.output_factor`) to every use's output,
   ``[K, *use.output.shape]`` with the sample and position axes intact. KFAC's 'forward-only'
   needs the inputs alone and skips it.

A layer is *per sample* in a pass (:func:`per_sample_layers`) if it has no forward hooks but ours
and there are no global ones (they may change its output), each of its calls whose output leads
to the model's has a tensor input with the batch's ``N`` samples on its first axis
(:meth:`.rule.LayerRule.has_sample_rows`), computed from the batch input (not, say, a table of
positions that happens to have ``N`` rows) and not overwritten in place since, and its parameters
that require grad enter the autograd graph of the output only through these calls (of it and of
the other layers they sit in: tied weights; no other code uses them). Samples must not be coupled
(as for every per-sample method): then the rows of each sample are its own, and per-sample
gradients are ``Σ_r g_{n,r} ψ(a_n)_rᵀ`` summed over the uses (:mod:`.rule`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.utils._pytree import tree_leaves, tree_map

from curvkit._layers.parameters import Layer, Use
from curvkit._model.autograd import grad_columns, leaf_uses
from curvkit._model.kernels import differentiable_kernels


@contextmanager
def recording(layers: list[Layer]) -> Iterator[None]:
    """Record each call of the ``layers`` (:attr:`.parameters.Layer.uses`) while the context is open.

    The model continues with a copy of each output (an in-place operation after the layer would
    otherwise change the recorded one). The records are dropped when the context closes: they
    hold the pass's autograd graph.
    """

    def hook_for(layer: Layer):
        def hook(module, args, kwargs, output):
            inputs = args[0] if args else kwargs.get("input")
            layer.uses.append(Use(inputs, output, inputs._version) if isinstance(inputs, Tensor) else None)
            copy, mark = output.clone(), _MARK.get()
            if mark is not None and isinstance(inputs, Tensor) and not inputs.is_floating_point():
                copy = mark(inputs, copy)  # an embedding of the batch's indices: traced from here on
            return copy

        return hook

    handles = []
    for layer in layers:
        layer.uses.clear()
        handles.append(layer.module.register_forward_hook(hook_for(layer), with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for layer in layers:
            layer.uses.clear()


def per_sample_layers(
    layers: list[Layer], output: Tensor, batch_size: int, from_batch: Callable[[Tensor], bool]
) -> list[Layer]:
    """The recorded layers that are per sample in this pass (module docstring).

    Their :attr:`~.parameters.Layer.uses` are reduced to the calls whose output leads to the
    model's (a call for a detached statistic contributes nothing).

    Args:
        layers: Layers recorded during the pass that computed ``output``.
        output: The model output, with its autograd graph.
        batch_size: ``N``.
        from_batch: Whether a tensor was computed from the batch input.
    """
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_hooks_with_kwargs:
        return []
    candidates = [layer for layer in layers if layer.uses and len(layer.module._forward_hooks) == 1]
    if not candidates:  # spare the graph walk
        return []
    uses_of, nodes = leaf_uses(output)
    chosen = []
    for layer in candidates:
        uses = [use for use in layer.uses if use is None or use.output.grad_fn in nodes]
        if uses and all(
            use is not None
            and layer.rule.has_sample_rows(layer.module, use.inputs)
            and use.inputs.shape[0] == batch_size
            and use.inputs._version == use.version  # not overwritten in place since
            and all(_consumes(use.output.grad_fn, tensor) for tensor in layer.trainable())
            and from_batch(use.inputs)
            for use in uses
        ):
            layer.uses[:] = uses
            chosen.append(layer)
    while True:  # each parameter enters the graph through the chosen layers' uses only
        expected: dict[int, int] = {}
        for layer in chosen:
            for tensor in layer.trainable():
                expected[id(tensor)] = expected.get(id(tensor), 0) + len(layer.uses)
        kept = [
            layer
            for layer in chosen
            if all(uses_of.get(id(tensor), 0) == expected[id(tensor)] for tensor in layer.trainable())
        ]
        if len(kept) == len(chosen):
            return kept
        chosen = kept  # a layer left out may share a parameter with another


def _consumes(node, tensor: Tensor, depth: int = 4) -> bool:
    """Whether the autograd ``node`` takes the leaf ``tensor`` within ``depth`` steps.

    ``F.linear`` records a product node that takes the weight through its transpose (and, on
    inputs with leading dimensions, through a view and a reshape).
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
        The input to call the model with, and whether a tensor was computed from it (a floating
        one has a tangent; an integer one, an embedding's indices, shares the memory of an
        integer tensor of the input). Dual numbers leave ``requires_grad`` and the model's own
        code alone.
    """
    integers = {
        tensor.untyped_storage().data_ptr()
        for tensor in tree_leaves(X)
        if isinstance(tensor, Tensor) and not tensor.is_floating_point()
    }

    def with_tangent(tensor: Any) -> Any:
        if isinstance(tensor, Tensor) and tensor.is_floating_point():
            return forward_ad.make_dual(tensor, torch.zeros_like(tensor))
        return tensor

    def from_batch(tensor: Tensor) -> bool:
        if not tensor.is_floating_point():
            return tensor.untyped_storage().data_ptr() in integers
        return forward_ad.unpack_dual(tensor).tangent is not None

    def mark(inputs: Tensor, output: Tensor) -> Tensor:
        if output.is_floating_point() and from_batch(inputs) and not from_batch(output):
            return forward_ad.make_dual(output, torch.zeros_like(output))
        return output

    with forward_ad.dual_level(), _marking(mark):
        yield tree_map(with_tangent, X), from_batch


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

    integers = {
        tensor.untyped_storage().data_ptr()
        for tensor in tree_leaves(X)
        if isinstance(tensor, Tensor) and not tensor.is_floating_point()
    }
    traced_X = tree_map(traced, X)
    reachability = _Reachability({id(leaf) for leaf in leaves})

    def from_batch(tensor: Tensor) -> bool:
        if not tensor.is_floating_point():
            return tensor.untyped_storage().data_ptr() in integers
        return reachability(tensor)

    def mark(inputs: Tensor, output: Tensor) -> Tensor:
        if output.grad_fn is not None and from_batch(inputs):
            reachability.memo[output.grad_fn] = True  # the clone's node: reached from the batch
        return output

    with _marking(mark):
        yield traced_X, from_batch


_MARK: ContextVar[Callable[[Tensor, Tensor], Tensor] | None] = ContextVar("curvkit_layer_mark", default=None)
"""While a tracing runs: marks the output of a layer whose integer input came from the batch
(an embedding of the batch's tokens) as computed from the batch, which the tracings cannot see
through integer indices otherwise."""


@contextmanager
def _marking(mark: Callable[[Tensor, Tensor], Tensor]) -> Iterator[None]:
    token = _MARK.set(mark)
    try:
        yield
    finally:
        _MARK.reset(token)


TRACINGS = (dual_numbers, autograd_leaves)
"""Ways to tell layer inputs computed from the batch, in order of preference."""


def traced_forward(
    model: Callable[[Any], Tensor],
    module: nn.Module,
    X: Any,
    batch_size: int,
    layers: list[Layer],
    traced: bool = True,
    tracings: tuple[Callable, ...] = TRACINGS,
) -> tuple[Tensor, list[Layer]]:
    """The output with its graph, and the ``layers`` that are per sample on this batch.

    Call it inside :func:`recording` of ``layers``. The batch input is traced (:data:`TRACINGS`:
    dual numbers, else autograd leaves) to tell which layer inputs were computed from it. A model
    that runs with neither, or without any such layer, gets none, and no graph. ``module`` is the
    network ``model`` calls (it selects the kernels, :func:`differentiable_kernels`).
    ``traced=False`` skips the tracing (with dual numbers it costs a pass of zero tangents) and
    takes every layer input with ``N`` samples as computed from the batch: for a model whose
    layers were seen to be on an earlier batch. ``tracings``: the ways to try, in order (KFAC
    takes autograd leaves first: a dual-number pass of a linear layer costs a second forward).
    """
    if not traced and layers:
        with torch.enable_grad(), differentiable_kernels(module):
            output = model(X)
            return output, per_sample_layers(layers, output, batch_size, lambda tensor: True)
    with torch.enable_grad(), differentiable_kernels(module):
        for tracing in tracings if layers else ():
            try:
                with tracing(X) as (traced_X, from_batch):
                    output = model(traced_X)
                    return output, per_sample_layers(layers, output, batch_size, from_batch)
            except (NotImplementedError, RuntimeError):  # not on traced inputs: next way
                for layer in layers:
                    layer.uses.clear()
    with torch.no_grad(), differentiable_kernels(module):
        return model(X), []


def output_gradients(layers: list[Layer], output: Tensor, columns: Tensor) -> list[list[Tensor]]:
    """``[K, *use.output.shape]`` for every use of every layer: ``columns`` pulled back to it.

    One batched backward pass (``is_grads_batched``) of ``columns`` ``[K, *output.shape]`` from
    ``output`` to the recorded outputs of :func:`per_sample_layers`' layers; the graph is kept.
    A loop of one backward pass per column was slower on both benchmark problems
    (docs/design-notes.md, "The GGN diagonal through the rules").
    """
    outputs = [use.output for layer in layers for use in layer.uses]
    gradients = iter(grad_columns([output], outputs, [columns]))
    return [[next(gradients) for _ in layer.uses] for layer in layers]


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
