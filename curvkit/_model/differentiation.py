r"""The model as a differentiable function of its parameters, and its derivatives per batch.

The machinery is chosen by measurement (benchmark problems MLP / transformer / CNN, one thread,
CPU time, in gradients, glibc's heap trimming off so that page faults do not blur the comparison;
see ``docs/design-notes.md``):

- **Plain autograd where it is faster.** The model is called as it is and differentiated with
  ``torch.autograd`` (:mod:`.autograd`); ``torch.func`` wraps every intermediate tensor, which
  costs most on models of many small operations. For one vector: a GGN product took 2.1 / 2.3 /
  1.8 gradients this way against 2.7 / 3.8 / 2.6 through ``torch.func``, a Hessian product 2.4 /
  2.7 / 3.1 against 3.0 / 4.5 / 4.1.
- **One vector, used once: forward mode in the primal pass.** Parameters become dual numbers
  (``torch.autograd.forward_ad``, substituted with ``functional_call``), so the forward pass that
  records the graph for ``Jᵀ w`` also yields ``J v``. One vector, cached linearization: ``J v``
  transposes the backward pass ("double backward", reverse mode), except for convolutional
  networks (:func:`_has_convolutions`), whose double backward is expensive.
- **Several columns: forward mode**, ``vmap``-ed over ``torch.func.jvp`` (16 GGN columns: 20.0 /
  14.4 / 20.3 gradients against 21.0 / 17.9 / 32.3 for a batched double backward), ``Jᵀ W`` as
  one batched backward pass (``is_grads_batched``). Hessian columns are ``vmap``-ed over
  ``torch.func.vjp`` of ``torch.func.grad`` (26.1 / 22.8 / 33.4 against 27.4 / 23.7 / 35.4
  through autograd); one Hessian-vector product is reverse over reverse through autograd.
- GGN, EF and MC-Fisher columns on models whose parameters all sit in ``nn.Linear`` layers and
  convolutions can skip all of this (:mod:`curvkit._layers.jtlj`), and so can Hessian products of
  ``nn.Sequential`` chains of such layers and elementwise activations (:mod:`curvkit._layers.chain`).
- Where forward-mode derivatives are missing (custom ``autograd.Function``\ s without ``jvp``,
  operations PyTorch has none for), the first failure switches the model to reverse mode for
  good. Fused attention kernels and the eval-mode fast path of ``nn.MultiheadAttention`` have
  none either; products switch those off instead (:func:`differentiable_kernels`).

Fused scaled-dot-product attention kernels have no second derivative, and oneDNN's and cuDNN's
recurrent kernels lack some derivatives, so all forward passes select kernels that have them
(:func:`differentiable_kernels`). Models need not be
``nn.Module``\ s: any callable ``X ↦ f(X)`` that closes over its parameters works, in reverse mode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.func import grad, vjp, vmap
from torch.func import jvp as forward_jvp

from curvkit._model.autograd import (
    call_with,
    hessian_products,
    leaf_uses,
    output_with_tangent,
    reverse_products,
)
from curvkit._model.kernels import differentiable_kernels
from curvkit._model.parameters import ModelParameters

T = TypeVar("T")


@dataclass(frozen=True)
class Linearization:
    """A batch's model output and the products with its Jacobian ``J = ∂f/∂θ``.

    Attributes:
        output: ``f(X; θ)``, detached.
        jvp: ``[V_1, ..., V_P]`` (each ``[k, *θ_p.shape]``) ↦ ``J V`` of shape ``[k, *output.shape]``.
        vjp: ``W`` of shape ``[k, *output.shape]`` ↦ ``Jᵀ W`` as a list of ``[k, *θ_p.shape]``.
    """

    output: Tensor
    jvp: Callable[[list[Tensor]], Tensor]
    vjp: Callable[[Tensor], list[Tensor]]


class ModelFunction(ModelParameters):
    """``f(X; θ)`` for a subset ``θ`` of a model's parameters, and its derivatives per product.

    The parameters themselves (checks, labels, layout, names in the module) are the base's,
    :class:`.parameters.ModelParameters`.

    Args:
        model_func: An ``nn.Module`` or a callable ``X ↦ f(X)``.
        params: The parameters ``θ``: a list of tensors or a dict of named tensors, all of one
            dtype and device, all requiring grad.

    Raises:
        ValueError: If ``params`` is empty, has mixed dtypes/devices, a tensor that does not
            require grad, or a tensor that is not a parameter of the module.
    """

    def __init__(
        self, model_func: Callable[[Tensor], Tensor], params: Sequence[Tensor] | Mapping[str, Tensor]
    ):
        super().__init__(model_func, params)
        self.is_module = isinstance(model_func, nn.Module)
        self.prefers_forward_mode = _has_convolutions(model_func)
        self.forward_mode_available = True  # until an operation without forward-mode derivative shows up

    # ------------------------------------------------------------------ evaluation
    def __call__(self, X: Tensor | Mapping[str, Tensor]) -> Tensor:
        """The output at the current parameters (differentiable through autograd).

        With the kernels that the products differentiate (:func:`differentiable_kernels`), so
        that every evaluation computes the same function.
        """
        with differentiable_kernels(self.model_func):
            return self.model_func(X)

    def functional(self, X, indices: Sequence[int]) -> Callable[..., Tensor]:
        """``(θ_i for i in indices) ↦ f(X; θ)`` with the other parameters held fixed."""
        fixed = [tensor.detach() for tensor in self.tensors]

        def forward(*values: Tensor) -> Tensor:
            replaced = list(fixed)
            for index, value in zip(indices, values):
                replaced[index] = value
            return call_with(self.model_func, self._aliases, replaced, X)

        return forward

    def check_all_used(self, X) -> Tensor:
        """Raise if some parameter does not influence the output on batch ``X``; else the output.

        One forward pass and a walk of its autograd graph (:func:`.autograd.leaf_uses`), not a
        backward pass; a parameter that is no leaf of the graph is looked for by
        ``torch.autograd.grad``.

        Returns:
            The output, detached.

        Raises:
            ValueError: Naming the unused parameter.
        """
        with torch.enable_grad():
            output = self(X)
            if not isinstance(output, Tensor):
                raise ValueError(f"model_func must return a tensor, got {type(output).__name__}.")
            if not output.requires_grad:
                raise ValueError("model_func's output does not depend on params.")
            if all(tensor.is_leaf for tensor in self.tensors):
                uses, _ = leaf_uses(output)
                used = [id(tensor) in uses or tensor is output for tensor in self.tensors]
            else:
                gradients = torch.autograd.grad(output.sum(), self.tensors, allow_unused=True)
                used = [gradient is not None for gradient in gradients]
        for label, is_used in zip(self.labels, used):
            if not is_used:
                raise ValueError(
                    f"{label} is not used by model_func: its curvature would be zero. Remove it (or, "
                    "if it reaches the output through torch.utils.checkpoint, which curvature "
                    "products do not support, call model_func without activation checkpointing)."
                )
        return output.detach()

    # ------------------------------------------------------------------ derivatives
    def linearize(self, X) -> Linearization:
        """Output and Jacobian products on batch ``X`` (see the module docstring)."""
        with torch.enable_grad(), differentiable_kernels(self.model_func):
            output = self.model_func(X)
        return self._linearization(X, output)

    def linearize_along(self, X, tangents: list[Tensor]) -> tuple[Linearization, Tensor]:
        """The linearization on batch ``X`` and ``J V`` for ``tangents`` ``[k, *θ_p.shape]``.

        For one vector, ``J v`` comes out of the primal forward pass (dual numbers).
        """
        if tangents[0].shape[0] == 1:
            dual = self._in_forward_mode(
                lambda: output_with_tangent(self.model_func, self._aliases, self.tensors, X, tangents)
            )
            if dual is not None:
                output, output_tangents = dual
                return self._linearization(X, output), output_tangents
        linearization = self.linearize(X)
        return linearization, linearization.jvp(tangents)

    def _linearization(self, X, output: Tensor) -> Linearization:
        """Products with the Jacobian of ``output``, which carries its autograd graph."""
        reverse_jvp, vjp = reverse_products(output, self.tensors)

        def jvp(tangents: list[Tensor]) -> Tensor:
            output_tangents = None
            if tangents[0].shape[0] > 1 or self.prefers_forward_mode:
                output_tangents = self._in_forward_mode(lambda: self._forward_jvp(X, tangents))
            return reverse_jvp(tangents) if output_tangents is None else output_tangents

        return Linearization(output.detach(), jvp, vjp)

    def jvp(self, X, tangents: list[Tensor]) -> Tensor:
        """``J V`` on batch ``X`` for ``tangents`` ``[k, *θ_p.shape]``, when no ``Jᵀ W`` follows."""
        output_tangents = self._in_forward_mode(lambda: self._forward_jvp(X, tangents))
        return self.linearize(X).jvp(tangents) if output_tangents is None else output_tangents

    def _forward_jvp(self, X, tangents: list[Tensor]) -> Tensor:
        """``J V`` in forward mode: dual numbers for one column, ``vmap``-ed ``torch.func.jvp`` else."""
        if tangents[0].shape[0] == 1:
            return output_with_tangent(
                self.model_func, self._aliases, self.tensors, X, tangents, record_graph=False
            )[1]
        forward = self.functional(X, range(len(self.tensors)))
        primals = tuple(tensor.detach() for tensor in self.tensors)
        with differentiable_kernels(self.model_func):
            return vmap(lambda *columns: forward_jvp(forward, primals, columns)[1])(*tangents)

    def _in_forward_mode(self, compute: Callable[[], T]) -> T | None:
        """``compute()``, or ``None`` where forward mode is unavailable.

        Forward mode needs an ``nn.Module`` (its parameters are substituted). The first operation
        without a forward-mode derivative switches it off for good; other errors propagate.
        """
        if not (self.is_module and self.forward_mode_available):
            return None
        try:
            return compute()
        except NotImplementedError as error:
            if not any(phrase in str(error) for phrase in ("forward AD", "forward mode AD")):
                raise
            self.forward_mode_available = False
            return None

    def check_forward_mode(self, X) -> None:
        """Switch forward mode off for good if it disagrees with reverse mode on batch ``X``.

        The adjoint test ``⟨J v, w⟩ = ⟨v, Jᵀ w⟩`` for random ``v``, ``w``: ``J v`` from dual numbers,
        ``Jᵀ w`` from a backward pass. They disagree where forward mode ignores what reverse mode
        obeys: a parameter that also reaches the output inside ``torch.no_grad()`` (a
        stop-gradient) is a constant for gradients only, and a custom ``autograd.Function`` may
        define its ``jvp`` and ``backward`` inconsistently. The model's gradients use reverse mode,
        so products follow it. Costs one forward pass with dual numbers and one backward pass.
        """
        generator = torch.Generator(device=self.device).manual_seed(0)

        def draw(shape) -> Tensor:
            return torch.randn(shape, generator=generator, dtype=self.dtype, device=self.device)

        tangents = [draw((1, *tensor.shape)) for tensor in self.tensors]
        dual = self._in_forward_mode(
            lambda: output_with_tangent(self.model_func, self._aliases, self.tensors, X, tangents)
        )
        if dual is None:  # forward mode unavailable already
            return
        output, output_tangent = dual[0], dual[1].detach()
        cotangent = draw((1, *output.shape))
        _, vjp = reverse_products(output, self.tensors)
        gradients = vjp(cotangent)
        forward = torch.sum(output_tangent * cotangent)
        backward = sum(torch.sum(t * g) for t, g in zip(tangents, gradients))
        scale = torch.linalg.vector_norm(output_tangent) * torch.linalg.vector_norm(cotangent) + sum(
            torch.linalg.vector_norm(t) * torch.linalg.vector_norm(g) for t, g in zip(tangents, gradients)
        )
        if abs(float(forward - backward)) > torch.finfo(self.dtype).eps ** 0.5 * float(scale):
            self.forward_mode_available = False

    def hessian_product(
        self, X, y: Tensor, loss_func: Callable, indices: Sequence[int], several_columns: bool
    ) -> Callable[[list[Tensor]], list[Tensor]]:
        """``V ↦ ∇²_θ L_b V`` for the Hessian block of the parameters in ``indices``.

        Reverse over reverse: the gradient's graph is built once, each call is one reverse pass
        through it; through autograd for single vectors, ``vmap``-ed ``torch.func`` for columns.

        Args:
            X: Batch input.
            y: Batch target.
            loss_func: The loss.
            indices: Which parameters form the Hessian block.
            several_columns: Whether the tangents will have more than one column.

        Returns:
            A function of tangents ``[k, *θ_i.shape]`` (``i`` in ``indices``) returning the
            product in the same layout.
        """
        block = [self.tensors[i] for i in indices]
        if not (self.is_module and several_columns):
            return hessian_products(self.model_func, X, y, loss_func, block)
        forward = self.functional(X, indices)
        with differentiable_kernels(self.model_func):
            gradient = grad(lambda *values: loss_func(forward(*values), y), argnums=tuple(range(len(block))))
            _, hvp = vjp(gradient, *[tensor.detach() for tensor in block])

        def hvp_columns(tangents: list[Tensor]) -> list[Tensor]:
            with differentiable_kernels(self.model_func):
                return list(vmap(hvp)(tuple(tangents)))

        return hvp_columns


def _has_convolutions(model_func: Callable) -> bool:
    """Whether ``model_func`` is a module with convolution layers.

    Their ``J v`` runs in forward mode even for a single vector: the double backward of a
    convolution is expensive (design notes, "Measurements behind the code").
    """
    return isinstance(model_func, nn.Module) and any(
        isinstance(module, nn.modules.conv._ConvNd) for module in model_func.modules()
    )
