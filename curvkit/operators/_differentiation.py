r"""The model as a differentiable function of its parameters, and its derivatives per batch.

Everything is reverse mode. On the MLP benchmark (2 CPU cores), reverse-over-reverse took
2.7 gradients per Hessian product against 3.9 for forward-over-reverse, and a GGN product
whose Jacobian-vector product is the transpose of a vector-Jacobian product (a "double vjp")
1.7 gradients against 2.4 with forward mode. Reverse mode also works where forward-mode
derivatives are missing (fused attention kernels, the fast path of ``nn.TransformerEncoderLayer``
in eval mode).

Fused scaled-dot-product attention kernels have no second derivative either, so all products
run with the math attention kernel selected (:func:`differentiable_attention`).

``nn.Module``\ s are differentiated with ``torch.func`` through ``functional_call``; any other
callable ``X ↦ f(X)`` that closes over its parameters falls back to ``torch.autograd``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from curvkit._layout import TensorListLayout


def differentiable_attention():
    """Context that selects the twice-differentiable math kernel for ``scaled_dot_product_attention``."""
    return sdpa_kernel(SDPBackend.MATH)


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


def _normalize_params(
    params: Sequence[Tensor] | Mapping[str, Tensor],
) -> tuple[list[str] | None, list[Tensor]]:
    if isinstance(params, Mapping):
        return list(params.keys()), list(params.values())
    if isinstance(params, Tensor) or not isinstance(params, Sequence):
        raise ValueError(
            f"params must be a list of tensors or a dict of named tensors, got {type(params).__name__}."
        )
    return None, list(params)


def _module_parameter_names(model: nn.Module, names: list[str] | None, tensors: list[Tensor]) -> list[str]:
    """Find the attribute name of each tensor in ``model`` (by identity)."""
    by_identity = {}
    for name, tensor in model.named_parameters(remove_duplicate=False):
        by_identity.setdefault(id(tensor), name)
    found = []
    for index, tensor in enumerate(tensors):
        label = f"params[{names[index]!r}]" if names else f"params[{index}]"
        if id(tensor) not in by_identity:
            raise ValueError(f"{label} is not a parameter of model_func (compared by identity).")
        found.append(by_identity[id(tensor)])
    return found


class ModelFunction:
    """``f(X; θ)`` for a subset ``θ`` of a model's parameters.

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
        if not callable(model_func):
            raise ValueError(f"model_func must be callable, got {type(model_func).__name__}.")
        names, tensors = _normalize_params(params)
        if not tensors:
            raise ValueError("params must contain at least one tensor.")
        for index, tensor in enumerate(tensors):
            label = f"params[{names[index]!r}]" if names else f"params[{index}]"
            if not isinstance(tensor, Tensor):
                raise ValueError(f"{label} must be a tensor, got {type(tensor).__name__}.")
            if not tensor.requires_grad:
                raise ValueError(
                    f"{label} does not require grad; curvature is only defined for trainable parameters."
                )
        if len({t.dtype for t in tensors}) > 1 or len({t.device for t in tensors}) > 1:
            raise ValueError("params must all have the same dtype and device.")
        self.model_func = model_func
        self.labels = (
            [f"params[{n!r}]" for n in names] if names else [f"params[{i}]" for i in range(len(tensors))]
        )
        self.tensors = tensors
        self.layout = TensorListLayout([tensor.shape for tensor in tensors])
        self.dtype, self.device = tensors[0].dtype, tensors[0].device
        self.is_module = isinstance(model_func, nn.Module)
        self.column_chunk_size = _column_chunk_size(model_func)
        self._names = _module_parameter_names(model_func, names, tensors) if self.is_module else None

    # ------------------------------------------------------------------ evaluation
    def __call__(self, X: Tensor | Mapping[str, Tensor]) -> Tensor:
        """The output at the current parameters (differentiable through autograd)."""
        return self.model_func(X)

    def functional(self, X, indices: Sequence[int]) -> Callable[..., Tensor]:
        """``(θ_i for i in indices) ↦ f(X; θ)`` with the other parameters held fixed."""
        fixed = {name: tensor.detach() for name, tensor in zip(self._names, self.tensors)}

        def forward(*values: Tensor) -> Tensor:
            replaced = dict(fixed)
            replaced.update({self._names[i]: value for i, value in zip(indices, values)})
            return functional_call(self.model_func, replaced, (X,))

        return forward

    def check_all_used(self, X) -> None:
        """Raise if some parameter does not influence the output on batch ``X``.

        Raises:
            ValueError: Naming the unused parameter.
        """
        with torch.enable_grad():
            output = self.model_func(X)
            if not isinstance(output, Tensor) or not output.requires_grad:
                raise ValueError("model_func's output does not depend on params.")
            gradients = torch.autograd.grad(output.sum(), self.tensors, allow_unused=True)
        for label, gradient in zip(self.labels, gradients):
            if gradient is None:
                raise ValueError(
                    f"{label} is not used by model_func: its curvature would be zero. Remove it."
                )

    # ------------------------------------------------------------------ derivatives
    def linearize(self, X) -> Linearization:
        """Output and Jacobian products on batch ``X`` (reverse mode only)."""
        if self.is_module:
            with differentiable_attention():
                primals = [tensor.detach() for tensor in self.tensors]
                output, pullback = vjp(self.functional(X, range(len(primals))), *primals)
                # u ↦ Jᵀu is linear; the vjp of that map with cotangent v is J v.
                _, pushforward_transpose = vjp(pullback, torch.zeros_like(output))
            return Linearization(
                output.detach(),
                lambda tangents: _with_attention(
                    vmap(lambda *v: pushforward_transpose(v)[0], chunk_size=self.column_chunk_size), *tangents
                ),
                lambda cotangents: list(
                    _with_attention(vmap(pullback, chunk_size=self.column_chunk_size), cotangents)
                ),
            )
        with torch.enable_grad(), differentiable_attention():
            output = self.model_func(X)
            dummy = torch.zeros_like(output, requires_grad=True)
            transposed = list(torch.autograd.grad(output, self.tensors, dummy, create_graph=True))

        def jvp(tangents: list[Tensor]) -> Tensor:
            with differentiable_attention():
                return _batched_grad(transposed, [dummy], tangents)[0]

        def pullback(cotangents: Tensor) -> list[Tensor]:
            with differentiable_attention():
                return _batched_grad([output], self.tensors, [cotangents])

        return Linearization(output.detach(), jvp, pullback)

    def hessian_product(
        self, X, y: Tensor, loss_func: Callable, indices: Sequence[int]
    ) -> Callable[[list[Tensor]], list[Tensor]]:
        """``V ↦ ∇²_θ L_b V`` for the Hessian block of the parameters in ``indices``.

        The gradient's graph is built once; each call is one reverse pass through it
        (reverse over reverse), ``vmap``-ed over the leading axis of the tangents.

        Args:
            X: Batch input.
            y: Batch target.
            loss_func: The loss.
            indices: Which parameters form the Hessian block.

        Returns:
            A function of tangents ``[k, *θ_i.shape]`` (``i`` in ``indices``) returning the
            product in the same layout.
        """
        block = [self.tensors[i] for i in indices]
        with differentiable_attention():
            if self.is_module:
                forward = self.functional(X, indices)
                gradient = grad(
                    lambda *values: loss_func(forward(*values), y), argnums=tuple(range(len(indices)))
                )
                _, hvp = vjp(gradient, *[tensor.detach() for tensor in block])
                return lambda tangents: list(
                    _with_attention(vmap(hvp, chunk_size=self.column_chunk_size), tuple(tangents))
                )
            with torch.enable_grad():
                loss = loss_func(self.model_func(X), y)
                gradient = list(torch.autograd.grad(loss, block, create_graph=True))

        def hvp_autograd(tangents: list[Tensor]) -> list[Tensor]:
            with differentiable_attention():
                return _batched_grad(gradient, block, tangents)

        return hvp_autograd


def _column_chunk_size(model_func: Callable) -> int | None:
    """How many columns of a matrix product to ``vmap`` at once.

    ``vmap``'s batching rule for convolutions turns ``k`` columns into one large grouped
    convolution plus copies; in chunks of 4 a 16-column GGN product on the benchmark CNN took
    29 instead of 61 gradients (1 CPU thread), while dense layers are fastest unchunked.
    """
    if isinstance(model_func, nn.Module) and any(
        isinstance(module, nn.modules.conv._ConvNd) for module in model_func.modules()
    ):
        return 4
    return None


def _with_attention(function: Callable, *args):
    with differentiable_attention():
        return function(*args)


def _batched_grad(outputs: list[Tensor], inputs: list[Tensor], grad_outputs: list[Tensor]) -> list[Tensor]:
    """Autograd vector-Jacobian products for a leading batch of ``grad_outputs``."""
    return list(
        torch.autograd.grad(
            outputs, inputs, grad_outputs, retain_graph=True, is_grads_batched=True, materialize_grads=True
        )
    )
